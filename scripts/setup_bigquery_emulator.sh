#!/usr/bin/env bash
# Creates the BigQuery emulator's own virtual environment (local-bigquery needs Python 3.13 and DuckDB
# extensions that it would otherwise download at run time, which this network does not allow).
# Idempotent: a venv whose stamp matches the pinned versions is left as it is.
#   BQX_BQ_EMULATOR_VENV  where to create it (default: .emulators/bigquery-venv in the repository)
#   BQX_PYTHON313         the Python 3.13 interpreter (default: python3.13 on PATH, then pyenv's 3.13)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BQX_BQ_EMULATOR_VENV:-$repo/.emulators/bigquery-venv}"

local_bigquery_version="0.3.2"
duckdb_version="1.5.5"
# DuckDB extensions the emulator loads: ducklake stores its tables, icu backs its UTC TimeZone
# setting, spatial its geography macros; json, parquet and inet serve load/extract jobs and functions.
extensions=(ducklake icu spatial json parquet inet)
# The emulator's own dependencies, pinned to the set it was tested with (they are not ours to
# resolve afresh on every machine).
constraints="annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0 certifi==2026.10.19.post1 cffi==2.1.1 charset-normalizer==3.5.2 click==8.5.1 cryptography==50.0.2 fastapi==0.165.0 fastavro==1.13.1 google-api-core==2.44.0 google-auth==2.63.0 google-cloud-bigquery-storage==2.43.0 googleapis-common-protos==1.76.0 grpcio==1.85.3 grpcio-status==1.85.3 h11==0.16.0 idna==3.20 mini-racer==0.14.1 numpy==2.5.5 opentelemetry-api==1.45.2 prompt-toolkit==3.0.53 proto-plus==1.29.0 protobuf==7.36.2 pyarrow==26.0.1 pyasn1==0.6.5 pyasn1-modules==0.4.2 pycparser==3.12 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 pygments==2.21.0 python-dotenv==1.2.4 requests==2.34.2 sqlglot==30.30.0 starlette==1.10.0 typing-extensions==4.16.0 typing-inspection==0.4.5 urllib3==2.8.0 uvicorn==0.54.0 wcwidth==0.9.4"
stamp="local-bigquery==$local_bigquery_version duckdb==$duckdb_version ${extensions[*]} $constraints"

# One creator at a time (the test suite's worker processes may each ask at once): the others
# wait here, then find the stamp written.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [[ -f "$venv/.bqx-stamp" && "$(cat "$venv/.bqx-stamp")" == "$stamp" && -x "$venv/bin/local-bigquery" ]]; then
    echo "BigQuery emulator venv up to date: $venv"
    exit 0
fi

python313="${BQX_PYTHON313:-}"
if [[ -z "$python313" ]]; then
    for candidate in "$(command -v python3.13 || true)" \
        "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.13.0/bin/python3.13" \
        "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13.*/bin/python3.13 2>/dev/null | tail -1)"; do
        # pyenv shims exist on PATH for versions that are not selected: run it to be sure.
        if [[ -n "$candidate" && -x "$candidate" ]] &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            python313="$candidate"
            break
        fi
    done
fi
if [[ -z "$python313" ]]; then
    echo "setup_bigquery_emulator: no Python 3.13 interpreter found (set BQX_PYTHON313)" >&2
    exit 3
fi

rm -rf "$venv"
packages=("local-bigquery==$local_bigquery_version" "duckdb==$duckdb_version")
for ext in "${extensions[@]}"; do
    packages+=("duckdb-extension-$ext==$duckdb_version")
done
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
tr ' ' '\n' <<<"$constraints" >"$pins"
if command -v uv >/dev/null 2>&1; then
    uv venv --quiet --python "$python313" "$venv"
    VIRTUAL_ENV="$venv" uv pip install --quiet --python "$venv/bin/python" -c "$pins" "${packages[@]}"
else
    "$python313" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet -c "$pins" "${packages[@]}"
fi

# DuckDB looks for extensions under $HOME/.duckdb; the emulator runs with HOME set to this folder so
# that nothing is written to, or read from, the user's own home.
mkdir -p "$venv/duckdb-home"
HOME="$venv/duckdb-home" "$venv/bin/python" - "${extensions[@]}" <<'PY'
import importlib
import pathlib
import sys

import duckdb

for name in sys.argv[1:]:
    package = importlib.import_module(f"duckdb_extension_{name}")
    binary = next(pathlib.Path(package.__file__).parent.rglob("*.duckdb_extension"))
    duckdb.install_extension(str(binary), force_install=True)
con = duckdb.connect(config={"TimeZone": "UTC"})
for name in sys.argv[1:]:
    con.load_extension(name)
PY

echo "$stamp" >"$venv/.bqx-stamp"
echo "BigQuery emulator venv ready: $venv"
