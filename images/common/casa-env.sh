# shellcheck shell=bash
# casa_hub image helpers: checks of the facility environment a container gets from a casa spawner
# (CASA_TOKEN_DIR, BEARER_TOKEN_FILE, integration files) and the X509_CERT_DIR default.
# Sourced by the notebook's start hook and the worker's entrypoint; installed as
# /usr/local/lib/casa/casa-env.sh. It looks at paths and file modes only: it never reads a token.
#
# It is sourced into docker-stacks' start.sh: it defines functions only, changes no shell option,
# and every function returns a status instead of exiting.

# Messages go to stderr, prefixed with the calling script's name ($CASA_LOG_NAME).
casa_info() { printf '%s: %s\n' "${CASA_LOG_NAME:-casa}" "$*" >&2; }
casa_warn() { printf '%s: WARNING: %s\n' "${CASA_LOG_NAME:-casa}" "$*" >&2; }

# Where the notebook's files come from, for hints in warnings.
casa_mode_hint() {
  local mode group
  mode=$(stat -c '%a' -- "$1" 2>/dev/null) || mode="?"
  group=$(stat -c '%g' -- "$1" 2>/dev/null) || group="?"
  printf 'mode %s, group %s; this process: uid %s, groups %s' "$mode" "$group" "$(id -u)" "$(id -G)"
}

# X509_CERT_DIR: the XRootD client verifies TLS servers (roots://, https://, ztn) against a hashed
# CA directory. Keep a value that is set (warn if it is not a directory); otherwise export the first
# existing directory of $CASA_X509_CERT_DIRS (colon-separated, default: the grid CAs, then the
# system's). Returns 1 after a warning.
casa_default_x509_cert_dir() {
  if [ -n "${X509_CERT_DIR:-}" ]; then
    if [ ! -d "$X509_CERT_DIR" ]; then
      casa_warn "X509_CERT_DIR=$X509_CERT_DIR is not a directory: XRootD cannot verify TLS servers (roots://, https://)"
      return 1
    fi
    return 0
  fi
  local -a candidates
  local dir
  IFS=: read -r -a candidates <<<"${CASA_X509_CERT_DIRS:-/etc/grid-security/certificates:/etc/ssl/certs}"
  for dir in "${candidates[@]}"; do
    if [ -n "$dir" ] && [ -d "$dir" ]; then
      export X509_CERT_DIR="$dir"
      casa_info "X509_CERT_DIR=$dir (default: it was not set)"
      return 0
    fi
  done
  casa_info "X509_CERT_DIR is not set and none of ${CASA_X509_CERT_DIRS:-/etc/grid-security/certificates:/etc/ssl/certs} exists"
  return 0
}

# The token directory ($1): a readable directory with readable <grant>.token files.
# Prints the grants found (names only). Returns 1 after a warning.
casa_check_token_dir() {
  local dir=$1 f status=0
  local -a names=()
  if [ ! -d "$dir" ]; then
    casa_warn "CASA_TOKEN_DIR=$dir is not a directory: no facility tokens (storage, batch, services) in this container"
    return 1
  fi
  if [ ! -r "$dir" ] || [ ! -x "$dir" ]; then
    casa_warn "CASA_TOKEN_DIR=$dir is not readable ($(casa_mode_hint "$dir")): no facility tokens can be used"
    return 1
  fi
  for f in "$dir"/*.token; do
    [ -e "$f" ] || continue
    names+=("${f##*/}")
    if [ ! -f "$f" ] || [ ! -r "$f" ]; then
      casa_warn "token file $f is not readable ($(casa_mode_hint "$f")); on Kubernetes give the pod an fsGroup the user is in (Zero to JupyterHub: singleuser.fsGid) or set CasaKubeSpawner.casa_secret_file_mode to 0o444"
      status=1
    elif [ ! -s "$f" ]; then
      casa_warn "token file $f is empty"
      status=1
    fi
  done
  if [ ${#names[@]} -eq 0 ]; then
    casa_warn "CASA_TOKEN_DIR=$dir has no <grant>.token files: the hub minted no facility token for this user"
    return 1
  fi
  casa_info "facility tokens in $dir: ${names[*]}"
  return "$status"
}

# BEARER_TOKEN_FILE (WLCG bearer token discovery: XRootD, gfal, curl-based clients). Unset is
# allowed (a user without the storage grant); set means the file must exist, be readable and not
# be empty. Returns 1 after a warning.
casa_check_bearer_token_file() {
  local f=${BEARER_TOKEN_FILE:-}
  if [ -z "$f" ]; then
    casa_info "BEARER_TOKEN_FILE is not set: XRootD and other WLCG clients will send no storage token"
    return 0
  fi
  if [ ! -e "$f" ]; then
    casa_warn "BEARER_TOKEN_FILE=$f does not exist: XRootD and other WLCG clients will find no storage token"
    return 1
  fi
  if [ ! -f "$f" ] || [ ! -r "$f" ]; then
    casa_warn "BEARER_TOKEN_FILE=$f is not a readable file ($(casa_mode_hint "$f")): XRootD and other WLCG clients cannot use the storage token"
    return 1
  fi
  if [ ! -s "$f" ]; then
    casa_warn "BEARER_TOKEN_FILE=$f is empty: XRootD and other WLCG clients will send no storage token"
    return 1
  fi
  return 0
}

# Files and directories the casa integrations name in the environment. Each one that is set must
# exist (and a token file be readable). Returns 1 after a warning.
casa_check_integration_paths() {
  local var path status=0
  if [ -n "${CASA_CONFIG_DIR:-}" ] && [ ! -d "$CASA_CONFIG_DIR" ]; then
    casa_warn "CASA_CONFIG_DIR=$CASA_CONFIG_DIR is not a directory: the facility services' client settings are missing"
    status=1
  fi
  for var in CONDOR_CONFIG DASK_CONFIG CASA_SERVICEX_CONFIG CASA_TRITON_CONFIG \
    CASA_MLFLOW_TOKEN_FILE CASA_SERVICEX_TOKEN_FILE CASA_TRITON_TOKEN_FILE; do
    path=${!var:-}
    [ -n "$path" ] || continue
    if [ ! -e "$path" ]; then
      casa_warn "$var=$path does not exist"
      status=1
    elif [ ! -r "$path" ]; then
      casa_warn "$var=$path is not readable ($(casa_mode_hint "$path"))"
      status=1
    fi
  done
  return "$status"
}

# Remove these helpers from a shell that sourced this file (docker-stacks' start.sh).
casa_env_unset() {
  unset -f casa_info casa_warn casa_mode_hint casa_default_x509_cert_dir casa_check_token_dir \
    casa_check_bearer_token_file casa_check_integration_paths casa_env_unset
}
