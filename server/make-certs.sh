#!/usr/bin/env bash
# Key material for a fedcmr4d deployment (run once, on the coordinator's admin machine).
#
#   server/make-certs.sh OUT_DIR HOST[,HOST...] SITE [SITE...]
#
# OUT_DIR/ca.crt             give to every site (they verify the SuperLink with it)
# OUT_DIR/ca.key             keep offline
# OUT_DIR/server.pem, .key   the SuperLink's TLS certificate for every HOST (DNS names or IPs)
# OUT_DIR/supernodes/SITE.key  send to that site only (its SuperNode authentication key)
# OUT_DIR/supernodes/SITE.pub  register at the SuperLink: flwr supernode register SITE.pub <conn>
#
# Re-running keeps the CA and existing site keys and renews the server certificate.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0"; exit 2
fi
out=$1; hosts=$2; shift 2
args=(--out "$out")
IFS=',' read -r -a host_list <<< "$hosts"
for h in "${host_list[@]}"; do args+=(--host "$h"); done
for s in "$@"; do args+=(--site "$s"); done
exec python -m fedcmr4d.federated.certs "${args[@]}"
