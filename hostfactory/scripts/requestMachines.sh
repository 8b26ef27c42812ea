#!/bin/sh
# HostFactory provider plugin (hostfactory-cqrs): requestMachines -f INPUT_FILE
# One JSON object on stdout; logs to $HF_PROVIDER_LOGDIR or stderr, never merged into stdout.
# hfctl is taken from $HFCQRS_HFCTL, else beside this script, else from PATH.
here=$(cd "$(dirname "$0")" && pwd)
hfctl=${HFCQRS_HFCTL:-$here/hfctl}
[ -x "$hfctl" ] || hfctl=hfctl
if ! command -v "$hfctl" >/dev/null 2>&1; then
  # Still one JSON object: HostFactory reads stdout, and the reason shows in its log.
  echo "hostfactory-cqrs: hfctl not found (HFCQRS_HFCTL, beside $0, PATH)" >&2
  echo '{"message": "hfctl not found: install hostfactory-cqrs or set HFCQRS_HFCTL to its hfctl"}'
  exit 1
fi
exec "$hfctl" hostfactory requestMachines "$@"
