#!/bin/sh
# HostFactory provider plugin (hostfactory-cqrs): requestMachines -f INPUT_FILE
# One JSON object on stdout; logs to $HF_PROVIDER_LOGDIR or stderr, never merged into stdout.
# hfctl is taken from $HFCQRS_HFCTL, else beside this script, else from PATH.
here=$(cd "$(dirname "$0")" && pwd)
hfctl=${HFCQRS_HFCTL:-$here/hfctl}
[ -x "$hfctl" ] || hfctl=hfctl
exec "$hfctl" hostfactory requestMachines "$@"
