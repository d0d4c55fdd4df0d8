#!/usr/bin/env bash
# Key material for a fedcmr4d deployment (run once, on the coordinator's admin machine).
#
#   server/make-certs.sh OUT_DIR HOST[,HOST...] SITE [SITE...]
#   RENEW_SERVER_CERT=1 server/make-certs.sh OUT_DIR HOST[,HOST...]   # replace server.pem/.key
#
# OUT_DIR/ca.crt             give to every site (they verify the SuperLink with it)
# OUT_DIR/ca.key             keep offline
# OUT_DIR/server.pem, .key   the gate's and SuperLink's TLS certificate: every HOST (DNS names or
#                            IPs) plus 127.0.0.1 and localhost (the SuperLink sits on loopback)
# OUT_DIR/supernodes/SITE.key  send to that site only (its SuperNode authentication key)
# OUT_DIR/supernodes/SITE.pub  register on the coordinator: flwr supernode register SITE.pub local
#
# Private keys are created with mode 0600 from the start. Nothing is overwritten: re-running
# keeps the CA, the server certificate and existing site keys, adds keys for new sites, and
# prints every file it created, kept or (RENEW_SERVER_CERT=1 only) replaced.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,16p' "$0"; exit 2
fi
out=$1; hosts=$2; shift 2
args=(--out "$out")
IFS=',' read -r -a host_list <<< "$hosts"
for h in "${host_list[@]}"; do args+=(--host "$h"); done
for s in "$@"; do args+=(--site "$s"); done
[[ "${RENEW_SERVER_CERT:-0}" == 1 ]] && args+=(--renew-server-cert)
exec python -m fedcmr4d.federated.certs "${args[@]}"
