#!/usr/bin/env bash
# Start the coordinator's Flower SuperLink with TLS and SuperNode authentication.
#
#   CERTS=certs HOST=0.0.0.0 PORT=9093 DATABASE=superlink.db server/start-superlink.sh
#   server/start-superlink.sh --insecure     # LOCAL TESTS ONLY: no TLS, no authentication
#
# One port serves the Fleet API (SuperNodes), the Control API (flwr run / flwr supernode ...)
# and the ServerApp runtime. Only registered SuperNodes (flwr supernode register) may join.
# Runtime installation of app dependencies is disabled: the coordinator installs fedcmr4d
# itself (pip install -e .), so nothing is downloaded when a run starts.
set -euo pipefail
CERTS=${CERTS:-certs}
HOST=${HOST:-0.0.0.0}
PORT=${PORT:-9093}
DATABASE=${DATABASE:-superlink.db}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
common=(--host "$HOST" --port "$PORT" --database "$DATABASE" --disable-runtime-dependency-installation)
if [[ "${1:-}" == "--insecure" ]]; then
  echo "WARNING: insecure SuperLink (no TLS, no SuperNode authentication): local tests only" >&2
  exec flower-superlink --insecure "${common[@]}"
fi
for f in ca.crt server.pem server.key; do
  [[ -f "$CERTS/$f" ]] || { echo "error: $CERTS/$f is missing (run server/make-certs.sh)" >&2; exit 2; }
done
exec flower-superlink "${common[@]}" \
  --ssl-ca-certfile "$CERTS/ca.crt" \
  --ssl-certfile "$CERTS/server.pem" \
  --ssl-keyfile "$CERTS/server.key" \
  --enable-supernode-auth
