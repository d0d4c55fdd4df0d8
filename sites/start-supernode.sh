#!/usr/bin/env bash
# Start this site's Flower SuperNode (TLS + SuperNode authentication) from a site file, and
# beside it the site's own ClientApp runner, which runs only the app bundles the site pinned.
#
#   sites/start-supernode.sh sites/site.toml
#   sites/start-supernode.sh sites/site.toml --insecure   # LOCAL TESTS ONLY: no TLS, no auth
#
# The SuperNode dials out to the coordinator's gate (no inbound port is opened to the outside).
# It runs in `--isolation process`: it launches nothing itself. The ClientApp tasks it receives
# are taken by `python -m fedcmr4d.federated.pinning superexec` (this site's installed
# fedcmr4d), which checks each app bundle's digest against [supernode] app-digests of the site
# file BEFORE unpacking it and refuses any other (the coordinator sees "site app pin: ...").
# Without that runner, no ClientApp runs at all. The two talk over the SuperNode's runtime API on
# 127.0.0.1:runtime-port, authenticated with a fresh random secret per start. Runtime
# installation of app dependencies stays disabled: install fedcmr4d here yourself.
# REJOIN_WAIT (seconds, default 120): how long a SuperNode that fails at start is retried, so a
# restart after a crash rejoins once the SuperLink has marked the old session offline.
set -euo pipefail
site_file=${1:?usage: sites/start-supernode.sh SITE.toml [--insecure]}
[[ -f "$site_file" ]] || { echo "error: $site_file: no such site file" >&2; exit 2; }
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
parsed=$(python - "$site_file" "${2:-}" <<'PY'
import sys, tomllib
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.pinning import load_pins
path, insecure = sys.argv[1], sys.argv[2] == "--insecure"
try:
    with open(path, "rb") as handle:
        site = tomllib.load(handle)
    node, conn = site["node-config"], site["supernode"]
    if "cohort" not in node:
        raise KeyError("node-config.cohort")
    load_pins(path)
    out = [str(conn.get("runtime-port", 9094)),
           "--superlink", conn["superlink"], "--port", str(conn.get("runtime-port", 9094))]
    if insecure:
        out.append("--insecure")
    else:
        out += ["--root-certificates", conn["root-certificates"],
                "--auth-supernode-private-key", conn["auth-key"]]
except (OSError, KeyError, tomllib.TOMLDecodeError, ConfigError) as exc:
    sys.exit(f"error: {path}: {type(exc).__name__}: {exc}")
def value(v):
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
out += ["--node-config", " ".join(f"{k}={value(v)}" for k, v in node.items())]
print("\n".join(out))
PY
)
mapfile -t args <<< "$parsed"
runtime_port=${args[0]}; args=("${args[@]:1}")
[[ "${2:-}" == "--insecure" ]] && echo "WARNING: insecure SuperNode: local tests only" >&2

secret=$(mktemp "${TMPDIR:-/tmp}/fedcmr4d-superexec.XXXXXX")   # mode 0600
pids=()
stop() { trap - EXIT INT TERM; kill "${pids[@]}" 2>/dev/null || true; wait || true; rm -f "$secret"; }
trap stop EXIT
trap 'exit 143' INT TERM
head -c 32 /dev/urandom > "$secret"
python -m fedcmr4d.federated.pinning superexec --site-file "$site_file" \
  --runtime-api-address "127.0.0.1:$runtime_port" --superexec-auth-secret-file "$secret" \
  --parent-pid $$ &
runner=$!
pids+=("$runner")
# Rejoining after a crash: the SuperLink keeps a SuperNode that vanished "online" until two
# missed heartbeats (up to 60 s) and refuses to activate it again before that ("Failed to
# activate SuperNode"). So a SuperNode that fails within its first 30 s is started again every
# 5 s, for up to REJOIN_WAIT seconds (default 120) after this script started.
REJOIN_WAIT=${REJOIN_WAIT:-120}
set +e
while :; do
  started=$SECONDS
  flower-supernode "${args[@]}" --isolation process --superexec-auth-secret-file "$secret" &
  node=$!
  pids+=("$node")
  wait -n -p done_pid "$node" "$runner"
  rc=$?
  if [[ "$done_pid" == "$runner" ]]; then
    echo "start-supernode.sh: the ClientApp runner exited (status $rc); stopping" >&2
    exit "$rc"
  fi
  if (( rc != 0 && SECONDS - started < 30 && SECONDS < REJOIN_WAIT )); then
    echo "start-supernode.sh: SuperNode exited (status $rc) at start; retrying in 5 s" \
      "(an earlier session may still count as online at the SuperLink)" >&2
    sleep 5
    continue
  fi
  echo "start-supernode.sh: SuperNode exited (status $rc); stopping" >&2
  exit "$rc"
done
