#!/usr/bin/env bash
# casa_hub notebook start hook, installed as /usr/local/bin/before-notebook.d/casa-start.sh.
#
# docker-stacks' start.sh sources it right before it starts the notebook server, so what it exports
# (an X509_CERT_DIR default) reaches the server and its kernels. It checks the facility environment
# the casa spawner gave the pod (CASA_TOKEN_DIR, BEARER_TOKEN_FILE, the integrations' files) and
# prints a clear warning for each problem; the server starts anyway.
#
# Run by itself it is a check of the current environment: exit 0 when all is in order, 1 after a
# warning, 2 when its helpers are missing. It looks at paths and file modes only, never at a token.

casa_start_main() {
  local lib=${CASA_ENV_LIB:-/usr/local/lib/casa/casa-env.sh}
  if [ ! -r "$lib" ]; then
    printf 'casa-start: WARNING: %s is missing: the facility environment was not checked\n' "$lib" >&2
    return 2
  fi
  # shellcheck source-path=SCRIPTDIR source=../common/casa-env.sh
  . "$lib" || return 2
  local CASA_LOG_NAME=casa-start status=0
  casa_default_x509_cert_dir || status=1
  if [ -z "${CASA_TOKEN_DIR:-}" ]; then
    casa_info "CASA_TOKEN_DIR is not set: this server was not started by a casa_hub spawner, so it has no facility tokens"
    return "$status"
  fi
  casa_check_token_dir "$CASA_TOKEN_DIR" || status=1
  casa_check_bearer_token_file || status=1
  casa_check_integration_paths || status=1
  if [ "$status" -ne 0 ]; then
    casa_warn "the notebook server starts anyway; facility services named above may refuse it (ask the facility's admins)"
  fi
  return "$status"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # sourced by start.sh: report, but never stop the server from starting (start.sh may run with set -e)
  casa_start_main || :
  unset -f casa_start_main
  if declare -F casa_env_unset >/dev/null; then casa_env_unset; fi
else
  casa_start_main
  exit $?
fi
