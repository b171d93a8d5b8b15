#!/usr/bin/env bash
# casa_hub Dask worker image entrypoint, installed as /usr/local/bin/casa-worker-entrypoint.
#
#   casa-worker-entrypoint worker [ARGS...]      runs: dask worker ARGS...
#   casa-worker-entrypoint scheduler [ARGS...]   runs: dask scheduler ARGS...
#   casa-worker-entrypoint COMMAND [ARGS...]     runs COMMAND (e.g. a batch system's job script)
#
# Before the command starts: X509_CERT_DIR gets a default (see casa-env.sh) and the facility files
# the environment names (CASA_TOKEN_DIR, BEARER_TOKEN_FILE) are checked, with a warning for each
# problem. Token renewal: when CASA_TOKEN_DIR and JUPYTERHUB_API_URL are set (and the hub
# credential JUPYTERHUB_API_TOKEN), `casa-hub renew-tokens` keeps the token files fresh in the
# background for as long as the command runs; CASA_RENEW_TOKENS=0 turns that off, =1 makes a missing
# setting an error. The credential stays in the environment, never on a command line.
#
# Exit status: the command's; 2 for a usage or configuration error; 127 if the command is missing.

usage() {
  cat <<'EOF'
usage: casa-worker-entrypoint worker [DASK WORKER ARGS...]
       casa-worker-entrypoint scheduler [DASK SCHEDULER ARGS...]
       casa-worker-entrypoint COMMAND [ARGS...]
Token renewal (casa-hub renew-tokens) runs alongside when CASA_TOKEN_DIR, JUPYTERHUB_API_URL and
JUPYTERHUB_API_TOKEN are set; CASA_RENEW_TOKENS=0 turns it off, CASA_RENEW_TOKENS=1 requires it.
EOF
}

fail() {
  printf 'casa-worker: error: %s\n' "$*" >&2
  exit 2
}

if [ $# -eq 0 ]; then
  usage >&2
  exit 2
fi
case $1 in
  -h | --help)
    usage
    exit 0
    ;;
  worker | scheduler)
    role=$1
    shift
    cmd=(dask "$role" "$@")
    ;;
  *) cmd=("$@") ;;
esac

lib=${CASA_ENV_LIB:-/usr/local/lib/casa/casa-env.sh}
[ -r "$lib" ] || fail "$lib is missing (a broken image)"
# shellcheck source-path=SCRIPTDIR source=../common/casa-env.sh
. "$lib"
CASA_LOG_NAME=casa-worker

command -v "${cmd[0]}" >/dev/null 2>&1 || {
  printf 'casa-worker: error: %s: command not found\n' "${cmd[0]}" >&2
  exit 127
}

casa_default_x509_cert_dir || :
if [ -n "${CASA_TOKEN_DIR:-}" ]; then casa_check_token_dir "$CASA_TOKEN_DIR" || :; fi
# a batch job script may set BEARER_TOKEN_FILE itself later: only a value that is set is checked
if [ -n "${BEARER_TOKEN_FILE:-}" ]; then casa_check_bearer_token_file || :; fi

# Why the renewal cannot run (empty: it can).
renewal_problem() {
  if [ -z "${CASA_TOKEN_DIR:-}" ]; then
    echo "CASA_TOKEN_DIR is not set"
  elif [ -z "${JUPYTERHUB_API_URL:-}" ]; then
    echo "JUPYTERHUB_API_URL is not set"
  elif [ -z "${JUPYTERHUB_API_TOKEN:-}" ]; then
    echo "JUPYTERHUB_API_TOKEN (the hub credential for the token broker) is not set"
  elif [ ! -d "$CASA_TOKEN_DIR" ]; then
    echo "CASA_TOKEN_DIR=$CASA_TOKEN_DIR is not a directory"
  elif ! command -v casa-hub >/dev/null 2>&1; then
    echo "casa-hub is not on PATH"
  fi
}

renew=no
case ${CASA_RENEW_TOKENS:-auto} in
  0 | no | false | off) casa_info "token renewal is off (CASA_RENEW_TOKENS=$CASA_RENEW_TOKENS)" ;;
  1 | yes | true | on)
    problem=$(renewal_problem)
    [ -z "$problem" ] || fail "CASA_RENEW_TOKENS=$CASA_RENEW_TOKENS but tokens cannot be renewed: $problem"
    renew=yes
    ;;
  auto)
    problem=$(renewal_problem)
    if [ -z "$problem" ]; then
      renew=yes
    elif [ -n "${CASA_TOKEN_DIR:-}" ] && [ -n "${JUPYTERHUB_API_URL:-}" ]; then
      casa_warn "the token files in $CASA_TOKEN_DIR are not renewed: $problem"
    elif [ -n "${CASA_TOKEN_DIR:-}" ]; then
      casa_info "the token files in $CASA_TOKEN_DIR are not renewed ($problem)"
    fi
    ;;
  *) fail "CASA_RENEW_TOKENS must be 0, 1 or auto, not '$CASA_RENEW_TOKENS'" ;;
esac

if [ "$renew" = no ]; then
  exec "${cmd[@]}"
fi

casa-hub renew-tokens &
renewer=$!
casa_info "renewing the token files in $CASA_TOKEN_DIR with casa-hub renew-tokens (pid $renewer)"

"${cmd[@]}" &
child=$!
# a command started with & ignores SIGINT in a script, so an INT is passed on as a TERM
# shellcheck disable=SC2329  # called from the traps below
forward() { kill -s "$1" "$child" 2>/dev/null || :; }
trap 'forward TERM' TERM INT
trap 'forward HUP' HUP

# wait returns early (status > 128) when a trapped signal arrives: wait again until the command ends
while :; do
  wait "$child"
  status=$?
  kill -0 "$child" 2>/dev/null || break
done

# stop the renewal agent with the command (it exits on SIGTERM), forcefully after 10 s
if kill -0 "$renewer" 2>/dev/null; then
  kill -s TERM "$renewer" 2>/dev/null || :
  for _ in $(seq 100); do
    kill -0 "$renewer" 2>/dev/null || break
    sleep 0.1
  done
  kill -s KILL "$renewer" 2>/dev/null || :
fi
wait "$renewer" 2>/dev/null || :
exit "$status"
