#!/bin/sh
# Registers oppflow's namespace on the compose Temporal server (once; later runs find it).
set -eu

: "${TEMPORAL_ADDRESS:=temporal:7233}"
: "${TEMPORAL_NAMESPACE:=default}"
: "${TEMPORAL_RETENTION:=30d}"

attempt=0
until temporal operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
  attempt=$((attempt + 1))
  if [ "$attempt" -ge 30 ]; then
    echo "namespace job: Temporal at $TEMPORAL_ADDRESS is not healthy after 60 s" >&2
    exit 1
  fi
  sleep 2
done

if temporal operator namespace describe --address "$TEMPORAL_ADDRESS" -n "$TEMPORAL_NAMESPACE" >/dev/null 2>&1; then
  echo "namespace job: $TEMPORAL_NAMESPACE exists"
else
  temporal operator namespace create --address "$TEMPORAL_ADDRESS" -n "$TEMPORAL_NAMESPACE" \
    --retention "$TEMPORAL_RETENTION"
  echo "namespace job: created $TEMPORAL_NAMESPACE (retention $TEMPORAL_RETENTION)"
fi
