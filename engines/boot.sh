#!/bin/sh
# The PROCESS environment's command (a runner passes it arguments, not a shell line, so a wrapper is needed):
# runs engines/boot.py with $BEAM_BOOT_PYTHON, the absolute python that engines/cluster.py writes into the
# environment_config's "env" (FlinkCluster.beam_options / process_environment_options).
if [ -z "$BEAM_BOOT_PYTHON" ]; then
  echo "boot.sh: BEAM_BOOT_PYTHON is not set (pass it in --environment_config's \"env\")" >&2
  exit 2
fi
exec "$BEAM_BOOT_PYTHON" "$(dirname "$0")/boot.py" "$@"
