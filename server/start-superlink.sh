#!/usr/bin/env bash
# Start the coordinator's Flower SuperLink on loopback and, in front of it, the TLS gate sites use.
#
#   CERTS=certs HOST=0.0.0.0 PORT=9093 SUPERLINK_PORT=9091 DATABASE=superlink.db \
#     server/start-superlink.sh
#   PORT=9093 server/start-superlink.sh --insecure   # LOCAL TESTS ONLY: no TLS, no auth, loopback
#
# CERTS           folder with ca.crt, server.pem, server.key (server/make-certs.sh)
# HOST, PORT      the sites' address: the gate (python -m fedcmr4d.federated.gate) listens here,
#                 presents server.pem and forwards only the Fleet API (POST /v1/fleet/...); the
#                 Control API (flwr run, flwr supernode register, ...) and all else get 403
# SUPERLINK_PORT  the SuperLink's port, bound to 127.0.0.1 only: the coordinator's own flwr
#                 commands go there (server/flwr-config.toml), over the SuperLink's TLS
# DATABASE        the SuperLink's state (registered SuperNodes, runs)
# Only registered SuperNodes (flwr supernode register, on this machine) may join. Runtime
# installation of app dependencies is disabled: install fedcmr4d yourself (pip install -e .).
set -euo pipefail
CERTS=${CERTS:-certs}
HOST=${HOST:-0.0.0.0}
PORT=${PORT:-9093}
SUPERLINK_PORT=${SUPERLINK_PORT:-9091}
DATABASE=${DATABASE:-superlink.db}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
common=(--database "$DATABASE" --disable-runtime-dependency-installation)
if [[ "${1:-}" == "--insecure" ]]; then
  echo "WARNING: insecure SuperLink on 127.0.0.1:$PORT (no TLS, no SuperNode authentication," \
    "no gate): local tests only" >&2
  exec flower-superlink --insecure --host 127.0.0.1 --port "$PORT" "${common[@]}"
fi
for f in ca.crt server.pem server.key; do
  [[ -f "$CERTS/$f" ]] || { echo "error: $CERTS/$f is missing (run server/make-certs.sh)" >&2; exit 2; }
done
[[ "$PORT" != "$SUPERLINK_PORT" ]] || { echo "error: PORT and SUPERLINK_PORT must differ" >&2; exit 2; }

pids=()
stop() { trap - EXIT INT TERM; kill "${pids[@]}" 2>/dev/null || true; wait || true; }
trap stop EXIT
trap 'exit 143' INT TERM
flower-superlink --host 127.0.0.1 --port "$SUPERLINK_PORT" "${common[@]}" \
  --ssl-ca-certfile "$CERTS/ca.crt" \
  --ssl-certfile "$CERTS/server.pem" \
  --ssl-keyfile "$CERTS/server.key" \
  --enable-supernode-auth &
pids+=($!)
listen=$HOST; [[ "$HOST" == *:* ]] && listen="[$HOST]"
python -m fedcmr4d.federated.gate --listen "$listen:$PORT" \
  --upstream "127.0.0.1:$SUPERLINK_PORT" --certs "$CERTS" &
pids+=($!)
# Either one stopping stops both (the EXIT trap).
set +e
wait -n "${pids[@]}"
rc=$?
echo "start-superlink.sh: a component exited (status $rc); stopping the other" >&2
exit "$rc"
