#!/usr/bin/env bash
# GPU validation of sonotext in one go, on a fresh single-GPU box (H100/H200) without network access.
#
#   tools/gpu_validate.sh wheels   where pip reaches the package index: the wheels the GPU box lacks -> .whl/
#   tools/gpu_validate.sh run      on the GPU box, from the repository root: all below, figures under $OUT
#
# `run` installs .whl/*.whl (if present) into $WORK/site, first on PYTHONPATH, or uses $PYTHON as it is, then:
#   1. synthetic data (tools.synthetic) -> shards (tools.convert, tools.verify)
#   2. the trainer on CUDA in bf16 and fp16 (configs/debug.yaml): the loss falls, nothing is NaN
#   3. tools.bench gpu --audio ast: AST-base + RoBERTa-base in bf16 with and without gradient checkpointing,
#      step breakdown, peak memory, MFU, and the loader check (num_workers 0/2/4/8)
#   4. accelerate launch with configs/accelerate/multi_node_zero{2,3}.yaml on this one GPU: ZERO_STEPS/2 steps,
#      checkpoint, then a second launch resumes from it to ZERO_STEPS; a stage that fails in ZERO_PRECISION is
#      run again in fp32, which tells a ZeRO problem from a precision problem
#   5. tools.bench gpu --audio clap_htsat (model rows only)
#   6. summary.json / summary.md: every figure and check; the exit status is 0 only if every check passed
# A step that fails is recorded and the next one still runs; each step is cut at its share of TIME_BUDGET.
# The Python side (environment report, summary and checks) is tools/gpu_validate.py.
#
# Files under $OUT (at most 8): validate.log, env.txt, summary.json, summary.md, bench_ast.json,
# bench_clap_htsat.json, runs.tar.gz (every run's config, metrics.jsonl and log).
#
# Settings (environment): PYTHON (run: python3; wheels: .venv/bin/python), WHEELS (.whl), PYVER (3.12: the GPU
# box's Python), OUT (gpu_validate_out), WORK (/tmp/sonotext-gpu), TIME_BUDGET seconds (570), CLIPS (120),
# TRAIN_STEPS (200), ZERO_STEPS (300), ZERO_PRECISION (bf16), TRAIN_BATCH (16), CLIP_SECONDS (10),
# NUM_WORKERS (4), LOG_EVERY (10), BENCH_ARGS (added to both tools.bench gpu calls), ALLOW_CPU=1 (dry run
# without a GPU: fp16 skipped, the benchmarks in their tiny CPU mode). Dry run on a CPU machine (~3 minutes):
#   PYTHON=.venv/bin/python WHEELS=none ALLOW_CPU=1 CLIPS=12 TRAIN_STEPS=20 ZERO_STEPS=8 TRAIN_BATCH=4 \
#       CLIP_SECONDS=3 NUM_WORKERS=0 LOG_EVERY=2 tools/gpu_validate.sh run
set -euo pipefail

SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.."
WHEELS=${WHEELS:-.whl}
PYVER=${PYVER:-3.12}

wheels() {
    # The GPU image has torch, transformers, accelerate, scipy, scikit-learn, tqdm, ...; these it lacks (or
    # has in another version than the one tested here). Versions are the ones installed in $PYTHON here.
    local pkgs=(transformers regex hjson pydantic pydantic-core annotated-types typing-inspection
        typing-extensions webdataset braceexpand soundfile cffi pycparser soxr)
    PYTHON=${PYTHON:-.venv/bin/python}
    mkdir -p "$WHEELS"
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    for pkg in "${pkgs[@]}"; do
        local version
        version=$("$PYTHON" -m tools.gpu_validate version "$pkg")
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
            --implementation cp "${platforms[@]}" -d "$WHEELS" "$pkg==$version"
    done
    # DeepSpeed ships only a source archive; built without its CUDA ops it is pure Python (ops JIT-build there).
    local ds
    ds=$("$PYTHON" -m tools.gpu_validate version deepspeed)
    DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WHEELS" "deepspeed==$ds"
    ls -la "$WHEELS"
    du -sh "$WHEELS"
}

settings() {
    PYTHON=${PYTHON:-python3}
    OUT=${OUT:-gpu_validate_out}
    WORK=${WORK:-/tmp/sonotext-gpu}
    TIME_BUDGET=${TIME_BUDGET:-570}
    CLIPS=${CLIPS:-120}
    TRAIN_STEPS=${TRAIN_STEPS:-200}
    ZERO_STEPS=${ZERO_STEPS:-300}
    TRAIN_BATCH=${TRAIN_BATCH:-16}
    CLIP_SECONDS=${CLIP_SECONDS:-10}
    NUM_WORKERS=${NUM_WORKERS:-4}
    LOG_EVERY=${LOG_EVERY:-10}
    BENCH_ARGS=${BENCH_ARGS:-}
    ALLOW_CPU=${ALLOW_CPU:-0}
    ZERO_PRECISION=${ZERO_PRECISION:-bf16}
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
    export PYTHON OUT WORK TIME_BUDGET CLIPS TRAIN_STEPS ZERO_STEPS TRAIN_BATCH CLIP_SECONDS NUM_WORKERS \
        LOG_EVERY ZERO_PRECISION
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
}

run_all() {
    rm -rf "$WORK"
    mkdir -p "$WORK/logs" "$WORK/runs"
    if compgen -G "$WHEELS/*.whl" > /dev/null; then
        echo "=== installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $WORK/site"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$WHEELS"/*.whl
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    environment > "$OUT/env.txt" 2>&1 || true
    cat "$OUT/env.txt"
    local cuda
    cuda=$("$PYTHON" -m tools.gpu_validate cuda)
    if [[ $cuda != 1 && $ALLOW_CPU != 1 ]]; then
        echo "error: no CUDA device visible to $PYTHON (set ALLOW_CPU=1 for a dry run without GPU)"
        exit 2
    fi
    local bench_device=(--device cuda)
    [[ $cuda == 1 ]] || bench_device=(--device cpu --tiny)

    local raw=$WORK/raw shards=$WORK/shards shards32=$WORK/shards32 workers
    workers=$(nproc)
    step data 120 "$SELF" _data "$raw" "$shards" "$shards32" "$workers"

    step train_bf16 120 "$SELF" _trainer "$WORK/runs/bf16" train.mixed_precision=bf16
    if [[ $cuda == 1 ]]; then
        step train_fp16 120 "$SELF" _trainer "$WORK/runs/fp16" train.mixed_precision=fp16
    fi
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of words
    step bench_ast 240 "$PYTHON" -m tools.bench gpu "${bench_device[@]}" --audio ast \
        --data "$shards32/clotho/development" --json "$OUT/bench_ast.json" $BENCH_ARGS
    local port=29531
    for stage in 2 3; do
        zero "$stage" "$ZERO_PRECISION" "zero$stage" $port
        port=$((port + 2))
        if [[ $(status "zero${stage}_phase1") != 0 && $ZERO_PRECISION != no ]]; then
            echo "=== zero$stage failed in $ZERO_PRECISION: the same in fp32 tells ZeRO from precision"
            zero "$stage" no "zero${stage}_fp32" $port
            port=$((port + 2))
        fi
    done
    # shellcheck disable=SC2086
    step bench_clap_htsat 150 "$PYTHON" -m tools.bench gpu "${bench_device[@]}" --audio clap_htsat \
        --data "$shards32/clotho/development" --loader-workers --json "$OUT/bench_clap_htsat.json" $BENCH_ARGS

    tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='checkpoints' --exclude='wandb' runs logs status.tsv
    set +e
    summarize
    local rc=$?
    set -e
    echo "=== done in $SECONDS s; figures in $OUT"
    return $rc
}

environment() {
    date -u
    nvidia-smi || echo "nvidia-smi: not available"
    echo "cpus: $(nproc)"
    free -g || true
    "$PYTHON" -m tools.gpu_validate env
}

# step NAME SECONDS CMD...: run CMD (cut at SECONDS or at the time left), log it, record its exit status.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((TIME_BUDGET - SECONDS - 20))
    ((left < limit)) && limit=$left
    if ((limit < 15)); then
        echo "=== $name: skipped, time budget spent"
        printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$WORK/status.tsv"
        return 0
    fi
    echo "=== $name (limit ${limit} s): $*"
    local start=$SECONDS rc
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$WORK/status.tsv"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
}

data() {
    local raw=$1 shards=$2 shards32=$3 workers=$4
    "$PYTHON" -m tools.synthetic --out "$raw" --clips "$CLIPS" --seed 0 --seconds "$CLIP_SECONDS" \
        --sample-rate 16000 --workers "$workers"
    "$PYTHON" -m tools.convert clotho --src "$raw/clotho" --out "$shards" --sample-rate 16000 \
        --samples-per-shard 8 --workers "$workers"
    "$PYTHON" -m tools.convert tacos --src "$raw/tacos" --out "$shards" --sample-rate 16000 \
        --samples-per-shard 8 --workers "$workers" --test-size $((CLIPS / 6 > 2 ? CLIPS / 6 : 2))
    # the benchmark reads 32 kHz shards, as the default data.sample_rate
    "$PYTHON" -m tools.convert clotho --src "$raw/clotho" --out "$shards32" --split development \
        --sample-rate 32000 --samples-per-shard 4 --workers "$workers"
    "$PYTHON" -m tools.verify "$shards/clotho/development"
    "$PYTHON" -m tools.verify "$shards32/clotho/development"
}

# zero STAGE PRECISION NAME PORT: accelerate launch, ZeRO-STAGE to ZERO_STEPS/2, then resume to ZERO_STEPS.
zero() {
    local stage=$1 precision=$2 name=$3 port=$4 overrides phase steps half=$((ZERO_STEPS / 2))
    read -r -a overrides <<< "$(train_overrides "$WORK/runs/$name")"
    for phase in 1 2; do
        steps=$half
        if [[ $phase == 2 ]]; then
            steps=$ZERO_STEPS
            if [[ $(status "${name}_phase1") != 0 ]]; then
                echo "=== ${name}_phase2: skipped, nothing to resume from"
                printf '%s\t%s\t%s\n' "${name}_phase2" skipped 0 >> "$WORK/status.tsv"
                return 0
            fi
        fi
        step "${name}_phase$phase" 150 "$PYTHON" -m accelerate.commands.launch \
            --config_file "configs/accelerate/multi_node_zero$stage.yaml" --num_machines 1 --num_processes 1 \
            --machine_rank 0 --main_process_ip 127.0.0.1 --main_process_port $((port + phase - 1)) \
            -m trainer configs/debug.yaml "${overrides[@]}" train.mixed_precision="$precision" \
            "train.deepspeed=configs/deepspeed/zero$stage.json" train.max_steps="$steps" \
            train.save_every="$half"
    done
}

status() {
    awk -F'\t' -v name="$1" '$1 == name { rc = $2 } END { print rc }' "$WORK/status.tsv"
}

train_overrides() {
    # configs/debug.yaml pointed at the generated shards (its one weak, strong, retrieval and temporal entry)
    local run=$1 shards=$WORK/shards
    echo "run.output_dir=$run data.sample_rate=16000 data.clip_seconds=$CLIP_SECONDS" \
        "data.batch_size=$TRAIN_BATCH data.num_workers=$NUM_WORKERS data.shuffle_buffer=64" \
        "data.weak.0.urls=$shards/clotho/development data.strong.0.urls=$shards/tacos/train" \
        "eval.retrieval.0.urls=$shards/clotho/evaluation eval.temporal.0.urls=$shards/tacos/test" \
        "optim.lr=2e-3 optim.warmup_steps=20 optim.min_lr_ratio=0.05 train.log_every=$LOG_EVERY" \
        "wandb.mode=disabled"
}

trainer() {
    local run=$1 overrides
    shift
    read -r -a overrides <<< "$(train_overrides "$run")"
    "$PYTHON" -m trainer configs/debug.yaml "${overrides[@]}" train.max_steps="$TRAIN_STEPS" \
        train.save_every=$((TRAIN_STEPS / 2)) "$@"
}

summarize() {
    # checks and figures of every step -> summary.json and summary.md; exit 1 if any check failed
    "$PYTHON" -m tools.gpu_validate summary --work "$WORK" --out "$OUT" --zero-steps "$ZERO_STEPS"
}

case "${1:-}" in
    wheels) wheels ;;
    run)
        settings
        run_all 2>&1 | tee -a "$OUT/validate.log"
        ;;
    _data)
        shift
        data "$@"
        ;;
    _trainer)
        shift
        trainer "$@"
        ;;
    *)
        echo "usage: tools/gpu_validate.sh wheels|run   (see the comments at the top of the file)" >&2
        exit 2
        ;;
esac
