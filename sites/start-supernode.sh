#!/usr/bin/env bash
# Start this site's Flower SuperNode (TLS + SuperNode authentication) from a site file.
#
#   sites/start-supernode.sh sites/site.toml
#   sites/start-supernode.sh sites/site.toml --insecure   # LOCAL TESTS ONLY: no TLS, no auth
#
# The SuperNode dials out to the SuperLink (no inbound port is opened to the outside); only
# weights, metrics and audit distances leave the site. Runtime installation of app
# dependencies stays disabled: install fedcmr4d here yourself (pip install -e .).
set -euo pipefail
site_file=${1:?usage: sites/start-supernode.sh SITE.toml [--insecure]}
[[ -f "$site_file" ]] || { echo "error: $site_file: no such site file" >&2; exit 2; }
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
parsed=$(python - "$site_file" "${2:-}" <<'PY'
import sys, tomllib
path, insecure = sys.argv[1], sys.argv[2] == "--insecure"
try:
    with open(path, "rb") as handle:
        site = tomllib.load(handle)
    node, conn = site["node-config"], site["supernode"]
    if "cohort" not in node:
        raise KeyError("node-config.cohort")
    out = ["--superlink", conn["superlink"], "--port", str(conn.get("runtime-port", 9094))]
    if insecure:
        out.append("--insecure")
    else:
        out += ["--root-certificates", conn["root-certificates"],
                "--auth-supernode-private-key", conn["auth-key"]]
except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
    sys.exit(f"error: {path}: {type(exc).__name__}: {exc}")
def value(v):
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
out += ["--node-config", " ".join(f"{k}={value(v)}" for k, v in node.items())]
print("\n".join(out))
PY
)
mapfile -t args <<< "$parsed"
[[ "${2:-}" == "--insecure" ]] && echo "WARNING: insecure SuperNode: local tests only" >&2
exec flower-supernode "${args[@]}"
