#!/usr/bin/env bash
# The GPU check in one command on a GPU machine with no network (README "GPU check", one call):
# installs the wheels carried in .whl/ (README "GPU check" lists them: onnxconverter-common, setuptools,
# wheel, rich, typer, pytest and theirs), installs mde from this checkout without touching the network,
# then runs benchmarks/gpu_check.py with its reports in OUT. An install that fails is said and the check
# goes on: a wheel for another Python is left out alone, and mde uninstalled runs from the checkout
# (on PYTHONPATH), so the sections that need neither still report.
#
#   bash benchmarks/gpu_check_offline.sh OUT [gpu_check.py options...]
#
# PYTHON picks the interpreter (default python3: the one that holds CUDA PyTorch). The wheels in
# MDE_WHEELS (default the checkout's .whl) go to a folder of their own (MDE_SITE, default a new folder
# /tmp/mde-site.XXXXXX) that comes first on PYTHONPATH, so a carried onnxruntime-gpu is imported instead of
# a CPU-only one.
set -euo pipefail
if [[ $# -lt 1 || -z $1 || $1 == -* ]]; then  # an empty OUT ("$OUT" unset) too
    echo "usage: bash benchmarks/gpu_check_offline.sh OUT [gpu_check.py options...]" >&2
    exit 2
fi
out=$1
shift
root=$(CDPATH='' cd -P -- "$(dirname -- "$0")/.." >/dev/null && pwd)  # no cd here: a relative OUT stays the caller's
python=${PYTHON:-python3}
wheel_dir=${MDE_WHEELS:-$root/.whl}
if ! command -v "$python" >/dev/null; then
    echo "gpu_check_offline: $python: no such Python (set PYTHON to the one that holds CUDA PyTorch)" >&2
    exit 2
fi
if [[ -n ${MDE_WHEELS:-} && ! -d $MDE_WHEELS ]]; then  # named on purpose, so not "no wheels"
    echo "gpu_check_offline: MDE_WHEELS $MDE_WHEELS: folder not found" >&2
    exit 2
fi
# gpu_check's own options first: a typo should not cost the minutes of the installs below
"$python" "$root/benchmarks/gpu_check.py" --out "$out" "$@" --check-options
wheels=("$wheel_dir"/*.whl)
ort_path=()
if [[ -e ${wheels[0]} ]]; then
    site=${MDE_SITE:-$(mktemp -d /tmp/mde-site.XXXXXX)}  # by default a new one: nothing an earlier run installed
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    for wheel in "${wheels[@]}"; do  # one at a time: a wheel for another Python costs that wheel, not the run
        if ! "$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
                --upgrade --target "$site" "$wheel"; then
            echo "gpu_check_offline: $(basename -- "$wheel"): not installed (above); going on without it" >&2
            continue
        fi
        case $(basename -- "$wheel") in  # an onnxruntime(-gpu): gpu_check imports it, not the machine's
            onnxruntime-[0-9]* | onnxruntime_gpu-[0-9]*) ort_path=(--ort-path "$site") ;;
        esac
    done
else
    echo "gpu_check_offline: no wheels in $wheel_dir/: FP16 export needs onnxconverter-common" \
        "(README 'GPU check')" >&2
fi
if ! "$python" -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check -e "$root"
then  # an old setuptools without wheel, none at all, a read-only site-packages: mde runs from the checkout
    echo "gpu_check_offline: mde not installed (above); running it from $root on PYTHONPATH" >&2
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$python" "$root/benchmarks/gpu_check.py" --out "$out" ${ort_path[@]+"${ort_path[@]}"} "$@"
