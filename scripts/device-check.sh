#!/usr/bin/env bash
# The GPU-machine check: CUDA and wgpu (Vulkan) tests with FFKERN_REQUIRE, `ffkern check` and
# `ffkern bench` on both backends, and the peer baselines (cuBLAS, PyTorch) on the same card.
#
# Here (a machine with Rust): scripts/device-check.sh --prepare
#   builds with --features cuda and copies the binaries, peers.py and the Vulkan loader packages
#   into .device/ (git-ignored); then run on the GPU machine, carrying .device:
#   bash scripts/device-check.sh            (writes $OUT/device-check.tgz and $OUT/summary.txt, default ./out)
# Knobs: KERNELS / KERNELS_BENCH (FFKERN_GEMM_KERNEL choices to check / time), TESTS=0,
# FFN_KERNEL / FFN_OPS (one more FFKERN_GEMM_KERNEL choice and the FFN families timed on it;
# empty skips), LINATTN_KERNELS
# (FFKERN_LINATTN_KERNEL choices tested and timed beside the default; empty skips), GRAPH_KERNELS
# (the same for FFKERN_GRAPH_KERNEL), KERNELS_TESTS (an FFKERN_GEMM_KERNEL choice for the test
# binaries that run GEMM backwards; empty skips),
# ROBUSTNESS_KERNELS and PROPERTIES_KERNELS (VAR=value lists; empty skips), WGPU_CHECK=0, CUDA_BENCH=0, WGPU_BENCH=0, PEERS=0 (PEERS_ONLY=gemm,... picks
# parts), NCU=1, SANITIZE=0 (no compute-sanitizer reruns of failing tests), PROFILE=0 / PROFILE_OPS, DETAIL=0, BUDGET_S (seconds for the whole run), BENCH_OPS (CUDA op families to time).
set -u
shopt -s nullglob
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    set -e
    export NVCC="${NVCC:-$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin', 'nvcc'))")}"
    cargo build --release --features cuda --bins --example framework_buffers
    tests=$(cargo test --release --features cuda --no-run --message-format=json 2>/dev/null |
        python3 -c "import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get('reason') == 'compiler-artifact' and m.get('executable') and m['target']['kind'] == ['test']:
        print(m['target']['name'], m['executable'])")
    # The binaries travel as one xz stream with a 64 MiB window, which stores the PTX that every
    # binary embeds about once (13 binaries: 12 MB, where gzip's 32 KiB window made 62 MB): the
    # carried folder must stay under the device tool's 64 MiB.
    pack=$(mktemp -d)
    mkdir -p "$pack/tests"
    cp target/release/ffkern target/release/examples/framework_buffers "$pack/"
    echo "$tests" | while read -r name exe; do cp "$exe" "$pack/tests/$name"; done
    rm -rf .device && mkdir -p .device/gl
    tar -cf - -C "$pack" . | xz -9 -T2 > .device/bin.txz && rm -rf "$pack"
    cp ../shared/anchors/peers.py .device/ 2>/dev/null || echo "note: ../shared/anchors/peers.py not found; peers will be skipped"
    # flash-linear-attention for the linear-attention peers: a pure-Python wheel (its needs,
    # einops, torch and triton, are on the GPU machine), installed there under /tmp/site.
    mkdir -p .device/whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .device/whl fla-core==0.6.0 ||
        echo "note: fla-core not downloaded; the fla peer rows will be skipped"
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial
    apt-get $o update >/dev/null
    (cd .device/gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null 2>&1)
    du -sh .device
    exit 0
fi

# Results come back as $OUT/device-check.tgz (every log and JSON) plus $OUT/summary.txt: the
# device tool returns only a handful of files per call.
DEST="${OUT:-$PWD/out}"
mkdir -p "$DEST"
OUT=$(mktemp -d)
trap 'tar -czf "$DEST/device-check.tgz" -C "$OUT" . && cp "$OUT/summary.txt" "$DEST/" 2>/dev/null' EXIT
D=.device
# The binaries (ffkern and the test executables), unpacked outside the carried folder.
B=/tmp/ffkern-bin
rm -rf $B && mkdir -p $B
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], **({'filter': 'fully_trusted'} if hasattr(tarfile, 'fully_trusted_filter') else {}))" $D/bin.txz $B
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

# Vulkan loader for wgpu (the image ships the NVIDIA ICD but no loader).
for f in $D/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
# cuBLAS/cuBLASLt for the baselines: PyTorch's wheels carry them.
libdir=$(python3 -c "import glob, site; print(':'.join(sorted({p.rsplit('/', 1)[0] for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/**/libcublas.so*', recursive=True)})))" 2>/dev/null)
export LD_LIBRARY_PATH="${libdir}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export XDG_RUNTIME_DIR=/tmp/xdg && mkdir -p -m 700 $XDG_RUNTIME_DIR

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
log "GPU: $(tail -1 "$OUT/gpu.txt")"
$B/ffkern info > "$OUT/info.txt" 2>&1
log "info: $(grep -E '^  (cuda|wgpu):' "$OUT/info.txt" | tr '\n' ';')"

# Every step's timeout is cut to what is left of BUDGET_S (default 540 s, one device call), so
# the steps run in order of worth and the late ones are skipped rather than the call killed.
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-540} ))
left() { echo $(( DEADLINE - $(date +%s) )); }
lim() { local l; l=$(left); if [ "$l" -lt "$1" ]; then echo $(( l > 5 ? l : 5 )); else echo "$1"; fi; }
enough() { [ "$(left)" -ge "${1:-30}" ] || { log "skipped $2: $(left) s left"; false; }; }

# Correctness first, all at once (they only need to be right, not timed): every test binary with
# FFKERN_REQUIRE=cuda,wgpu, and `ffkern check` on wgpu and on each CUDA GEMM kernel choice. The
# ops' unset output and scratch buffers start as NaN here (FFKERN_POISON), so any element a
# kernel leaves unwritten fails the comparison; the benches run without it.
export FFKERN_POISON=1
pids=()
# Each test run: its log name, then the environment and the binary (kept in tests.manifest so a
# failing run can be repeated under compute-sanitizer below).
test_run() { # log name, binary, VAR=value...
    local name=$1 bin=$2; shift 2
    echo "$name $bin $*" >> "$OUT/tests.manifest"
    # 240 s: with every run at once on 16 cores, the GEMM test's CPU references took over 180.
    env "$@" timeout "$(lim 240)" "$bin" > "$OUT/test-$name.log" 2>&1 &
    pids+=($!)
}
for t in $([ "${TESTS:-1}" = 1 ] && ls $B/tests/*); do
    test_run "$(basename "$t")" "$t" FFKERN_REQUIRE=cuda,wgpu FFKERN_BIN=$B/ffkern
done
if [ "${WGPU_CHECK:-1}" = 1 ]; then
    timeout "$(lim 120)" $B/ffkern check --backend wgpu > "$OUT/check-wgpu.txt" 2>&1 &
    pids+=($!)
fi
for k in ${KERNELS-auto mma pingpong kgen epiwarp}; do
    FFKERN_GEMM_KERNEL=$k timeout "$(lim 120)" $B/ffkern check --backend cuda > "$OUT/check-cuda-$k.txt" 2>&1 &
    pids+=($!)
done
# The linear-attention kernel choices beside the default (16-bit tensor cores where they fit, the
# chunked forms in one pass where they fit): per-chunk states and a scan (FFKERN_LINATTN_KERNEL=twopass)
# and the TF32 kernels (mma; simt, their f32-FMA twins, on request).
for lk in ${LINATTN_KERNELS-twopass mma}; do
    test_run "linattn-$lk" $B/tests/linattn FFKERN_LINATTN_KERNEL=$lk FFKERN_REQUIRE=cuda
    test_run "memory-$lk" $B/tests/memory FFKERN_LINATTN_KERNEL=$lk FFKERN_REQUIRE=cuda
done
# The GEMM backward's K-major operands on element loads (FFKERN_GEMM_KERNEL=kgen; the default
# takes 16-byte copies), through every test that runs a backward.
if [ -n "${KERNELS_TESTS-kgen}" ]; then
    for t in gemm ffn structured oneforecast; do
        test_run "$t-gemm-${KERNELS_TESTS-kgen}" $B/tests/$t FFKERN_GEMM_KERNEL=${KERNELS_TESTS-kgen} FFKERN_REQUIRE=cuda
    done
fi
# BlockShuffle's gathered middle activation (the CUDA default only where each block is 64 or more
# wide, wider than the tests' layers), through the Hopper GEMM's strided-column writer.
test_run "structured-gathered" $B/tests/structured FFKERN_SHUFFLE=gathered FFKERN_REQUIRE=cuda
test_run "robustness-gathered" $B/tests/robustness FFKERN_SHUFFLE=gathered FFKERN_REQUIRE=cuda
# Random descriptors against the CPU reference under each other kernel choice: the opt-in GEMMs
# before any can become a default, the two-pass linear attention and the thread graph form.
for kv in ${ROBUSTNESS_KERNELS-FFKERN_GEMM_KERNEL=epiwarp FFKERN_GEMM_KERNEL=pingpong FFKERN_GEMM_KERNEL=mma FFKERN_LINATTN_KERNEL=twopass FFKERN_GRAPH_KERNEL=thread}; do
    name=${kv#FFKERN_}
    test_run "robustness-${name//=/-}" $B/tests/robustness "$kv" FFKERN_REQUIRE=cuda
done
# Random problems of every family (tests/properties.rs): another, larger draw, and the default
# draw under each opt-in kernel choice.
test_run "properties-seed1" $B/tests/properties FFKERN_PROPTEST_SEED=1 FFKERN_PROPTEST_CASES=64 FFKERN_REQUIRE=cuda
for kv in ${PROPERTIES_KERNELS-FFKERN_GEMM_KERNEL=pingpong FFKERN_GEMM_KERNEL=epiwarp FFKERN_GEMM_KERNEL=kgen FFKERN_LINATTN_KERNEL=twopass FFKERN_SHUFFLE=gathered FFKERN_GRAPH_KERNEL=thread}; do
    name=${kv#FFKERN_}
    test_run "properties-${name//=/-}" $B/tests/properties "$kv" FFKERN_REQUIRE=cuda
done
# The graph row kernels on four columns a thread (the default takes the warp form where the widths allow).
for gk in ${GRAPH_KERNELS-thread}; do
    for t in graph gnn oneforecast; do
        test_run "$t-$gk" $B/tests/$t FFKERN_GRAPH_KERNEL=$gk FFKERN_REQUIRE=cuda
    done
done
# The low-level launchers on a framework's own wgpu device and CUDA stream (the example checks
# itself against the CPU reference).
timeout "$(lim 60)" $B/framework_buffers > "$OUT/example-framework.txt" 2>&1 &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
log "example framework_buffers: $(tr '\n' ';' < "$OUT/example-framework.txt" | cut -c1-400)"
for f in "$OUT"/test-*.log; do
    log "$(basename "$f" .log): $(grep -E '^test result' "$f" | tr '\n' ' ')"
    grep -E 'panicked|rms_ratio|Segmentation|Error' "$f" | head -8 | tee -a "$OUT/summary.txt"
done
for f in "$OUT"/check-*.txt; do
    log "$(basename "$f" .txt): $(tail -1 "$f")"
    grep -E 'FAIL|ERROR' "$f" | head -8 | tee -a "$OUT/summary.txt"
done
# A failing test (the first two of each run) again under compute-sanitizer's memcheck, so that a
# wrong result on a path that has not run before comes back with the access that caused it.
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
if [ "${SANITIZE:-1}" = 1 ] && [ -n "$san" ] && [ -f "$OUT/tests.manifest" ]; then
    while read -r name bin envs; do
        for t in $(grep -E '^test .* FAILED$' "$OUT/test-$name.log" | awk '{print $2}' | head -2); do
            enough 40 "sanitize $name $t" || break 2
            env $envs timeout "$(lim 90)" "$san" --tool memcheck --print-limit 12 "$bin" --exact "$t" --test-threads 1 > "$OUT/sanitize-$name-$t.txt" 2>&1
            log "sanitize $name $t: rc=$? $(grep -m1 'ERROR SUMMARY' "$OUT/sanitize-$name-$t.txt")"
            grep -E -m6 'Invalid|Out of bounds|Address|at .*linattn|at .*gemm|at .*graph' "$OUT/sanitize-$name-$t.txt" | tee -a "$OUT/summary.txt"
        done
    done < "$OUT/tests.manifest"
    # The same for a GEMM kernel choice whose `ffkern check` failed: its first failing op and dtype.
    for f in "$OUT"/check-cuda-*.txt; do
        k=${f##*/check-cuda-}; k=${k%.txt}
        read -r op _ dt _ < <(grep -E ' FAIL| ERROR' "$f" | head -1) || continue
        enough 40 "sanitize check $k" || break
        FFKERN_GEMM_KERNEL=$k timeout "$(lim 90)" "$san" --tool memcheck --print-limit 12 $B/ffkern check --backend cuda --op "$op" --dtype "$dt" > "$OUT/sanitize-check-$k.txt" 2>&1
        log "sanitize check $k ($op $dt): rc=$? $(grep -m1 'ERROR SUMMARY' "$OUT/sanitize-check-$k.txt")"
        grep -E -m6 'Invalid|Out of bounds|Address|at .*gemm' "$OUT/sanitize-check-$k.txt" | tee -a "$OUT/summary.txt"
    done
fi

if [ "${NCU:-0}" = 1 ]; then
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    timeout "$(lim 120)" "$ncu" --clock-control none -k regex:gemm_bf16_wgmma --launch-count 1 --section SpeedOfLight \
        --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
        $B/ffkern bench --dtype bf16 --reps 1 > "$OUT/ncu.txt" 2>&1
    log "ncu: rc=$?"
    grep -E "Duration|Compute \(SM\) Throughput|L2 Cache Throughput|Issue Slots Busy|Eligible Warps|Est. Speedup|stalled" "$OUT/ncu.txt" | head -12 | tee -a "$OUT/summary.txt"
fi
unset FFKERN_POISON
# Then the timings, one op family per process so that one failure costs only its own rows.
bench() { # name, timeout, args...
    local name=$1 secs=$2; shift 2
    enough 20 "bench $name" || return 0
    timeout "$(lim "$secs")" $B/ffkern bench "$@" --json --plot "$OUT/bench-$name.svg" > "$OUT/bench-$name.json" 2> "$OUT/bench-$name.err"
    log "bench $name: rc=$?"
}
# A kernel choice that has not run on a GPU before is timed only if its checks passed: a wrong or
# hung kernel would otherwise spend the budget that the later rows need.
checked() { # what, check or test logs...
    local what=$1 f; shift
    for f in "$@"; do
        if [ ! -f "$f" ] || ! grep -qE '^test result: ok|^[0-9]+ passed, 0 failed' "$f" || grep -qE '^test result: FAILED' "$f"; then
            log "skipped timing $what: $(basename "$f") did not pass"
            return 1
        fi
    done
}
if [ "${CUDA_BENCH:-1}" = 1 ]; then
    for k in ${KERNELS_BENCH-auto pingpong epiwarp}; do
        [ "$k" = auto ] || checked "$k" "$OUT/check-cuda-$k.txt" || continue
        FFKERN_GEMM_KERNEL=$k bench "cuda-gemm-$k" 90 --backend cuda --op gemm --dtype bf16 --reps 20
    done
    # structured (three FFN blocks against the dense FFN, then the pre-merge crossovers) runs once
    # per dtype, so that a slow f32 run cannot cost the bf16 rows.
    for op in ${BENCH_OPS:-repavit structured linear_attn graph}; do
        if [ "$op" = structured ]; then
            bench cuda-structured 90 --backend cuda --op structured --dtype bf16 --reps 20
            bench cuda-structured-f32 90 --backend cuda --op structured --dtype f32 --reps 20 --no-crossover
        else
            bench "cuda-$op" 90 --backend cuda --op "$op" --reps 20 --seq 4096,8192
        fi
    done
    # BlockShuffle with its middle activation in h's order (the second product gathering at stride
    # k, on element loads) against the gathered default of the row above.
    # Only with time to spare for the peers after it.
    for sf in ${SHUFFLE_FORMS-strided}; do
        enough 240 "bench structured-$sf" || break
        FFKERN_SHUFFLE=$sf bench "cuda-structured-$sf" 90 --backend cuda --op structured --dtype bf16 --reps 20 --no-crossover
    done
    # The FFN families on another GEMM schedule (default the epilogue warps), bf16.
    fk=${FFN_KERNEL-epiwarp}
    for op in $([ -n "$fk" ] && echo "${FFN_OPS-repavit structured}"); do
        checked "$fk" "$OUT/check-cuda-$fk.txt" || break
        FFKERN_GEMM_KERNEL=$fk bench "cuda-$op-$fk" 90 --backend cuda --op "$op" --dtype bf16 --reps 20 $([ "$op" = structured ] && echo --no-crossover)
    done
    for lk in ${LINATTN_KERNELS-twopass mma}; do
        checked "$lk" "$OUT/test-linattn-$lk.log" || continue
        FFKERN_LINATTN_KERNEL=$lk bench "cuda-linear_attn-$lk" 60 --backend cuda --op linear_attn --reps 10
    done
    for gk in ${GRAPH_KERNELS-thread}; do
        checked "$gk" "$OUT/test-graph-$gk.log" "$OUT/test-oneforecast-$gk.log" || continue
        FFKERN_GRAPH_KERNEL=$gk bench "cuda-graph-$gk" 90 --backend cuda --op graph --reps 20
    done
fi
if [ -f $D/peers.py ] && [ "${PEERS:-1}" = 1 ] && enough 40 peers; then
    if ls $D/whl/*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $D/whl/*.whl &&
            export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    PYTHONUNBUFFERED=1 timeout "$(lim 150)" python3 $D/peers.py --only ${PEERS_ONLY:-ffn,structured,linattn,graph} --json "$OUT/peers.json" > "$OUT/peers.txt" 2>&1
    log "peers: rc=$?"
    cat "$OUT/peers.txt" | tee -a "$OUT/summary.txt"
    # The OneForecast layer written in PyTorch, beside `ffkern bench --op graph`'s layer row.
    if enough 20 "peers layer"; then
        timeout "$(lim 90)" python3 scripts/peers_layer.py --json "$OUT/peers-layer.json" > "$OUT/peers-layer.txt" 2>&1
        log "peers layer: rc=$?"
        tail -4 "$OUT/peers-layer.txt" | tee -a "$OUT/summary.txt"
    fi
    # BatchNorm's training forward+backward in PyTorch, beside `ffkern bench --op repavit`'s rows.
    if enough 15 "peers batchnorm"; then
        timeout "$(lim 60)" python3 scripts/peers_batchnorm.py --json "$OUT/peers-batchnorm.json" > "$OUT/peers-batchnorm.txt" 2>&1
        log "peers batchnorm: rc=$?"
        tail -4 "$OUT/peers-batchnorm.txt" | tee -a "$OUT/summary.txt"
    fi
fi
# Per-kernel GPU time (ncu, one metric) of the CUDA benches that trail their peers most, so the
# next change goes where the time is: PROFILE_OPS, default the graph family, linear attention, the
# structured FFNs (ncu-structured.raw lists every launch in order: which GEMM shapes trail cuBLAS);
# an entry OP:VAR=value sets one kernel choice.
if [ "${PROFILE:-1}" = 1 ]; then
    ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    profile_ops=${PROFILE_OPS:-structured linear_attn linear_attn:FFKERN_LINATTN_KERNEL=twopass graph}
    for entry in $profile_ops; do
        op=${entry%%:*}; envs=; [ "$entry" != "$op" ] && envs=${entry#*:}
        name=$op${envs:+-${envs##*=}}
        enough 60 "profile $name" || break
        env $envs timeout "$(lim 150)" "$ncu" --clock-control none --csv --page raw --metrics gpu__time_duration.sum,launch__grid_size,launch__registers_per_thread \
            $B/ffkern bench --backend cuda --op "$op" --dtype bf16 --seq 1024 --reps 1 --no-crossover > "$OUT/ncu-$name.raw" 2> "$OUT/ncu-$name.err"
        log "profile $name: rc=$?"
        python3 - "$OUT/ncu-$name.raw" <<'PY' | tee -a "$OUT/summary.txt"
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
if len(rows) < 3: print("  no kernels profiled"); sys.exit()
h = rows[0]; name, t = h.index("Kernel Name"), h.index("gpu__time_duration.sum")
tot = collections.defaultdict(float); n = collections.Counter()
for r in rows[2:]:
    tot[r[name]] += float(r[t].replace(",", "")); n[r[name]] += 1
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:14]:
    print(f"  {v / 1e6:9.3f} ms  {n[k]:4d}x  {k[:90]}")
PY
    done
fi
# Stall reasons and memory traffic of one launch of each kernel furthest from its peer (DETAIL=1):
# the one-pass linear-attention forward and backward at flash-linear-attention's shape (the first
# shape that fills the GPU enough for them), and the bias+GELU wgmma GEMM (after 4096³'s two).
if [ "${DETAIL:-1}" = 1 ]; then
    ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    detail() { # name, skip, kernel regex, bench args...
        local name=$1 skip=$2 kern=$3; shift 3
        enough 45 "detail $name" || return 0
        timeout "$(lim 90)" "$ncu" --clock-control none -k "regex:$kern" --launch-skip "$skip" --launch-count 1 \
            --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section Occupancy \
            $B/ffkern bench --backend cuda --reps 1 "$@" > "$OUT/detail-$name.txt" 2>&1
        log "detail $name: rc=$?"
        grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|Eligible Warps|Achieved Occupancy|Registers Per|Est. Speedup|stall" "$OUT/detail-$name.txt" | head -14 | tee -a "$OUT/summary.txt"
    }
    detail linattn-fused 0 linattn_chunk_fused_bf16 --op linear_attn --seq 64
    detail linattn-fused-grad 0 linattn_chunk_fused_grad_bf16 --op linear_attn --seq 64
    detail gemm-gelu 2 gemm_bf16_wgmma --op gemm --dtype bf16
fi
if [ "${WGPU_BENCH:-1}" = 1 ]; then
    bench wgpu 120 --backend wgpu ${BENCH_OP:+--op $BENCH_OP} --reps 10 --full --dtype f32,bf16
    # The WGSL GEMM's 128×128 form (opt-in on a GPU) beside the 64×64 one that the run above takes.
    FFKERN_WGPU_GEMM=wide bench wgpu-gemm-wide 60 --backend wgpu --op gemm --reps 10 --full --dtype f32,bf16
else
    # The WGSL GEMM alone (16-byte slab loads, tenth session): seconds, so it runs in every call,
    # its 64×64 form (what auto takes on a GPU) beside the 128×128 one (7a5233e: its accumulators at
    # constant indices, after 63 ms against 9.3 for f32 4096³ on the H200).
    bench wgpu-gemm 60 --backend wgpu --op gemm --reps 10 --full --dtype f32,bf16
    FFKERN_WGPU_GEMM=wide bench wgpu-gemm-wide 60 --backend wgpu --op gemm --reps 10 --full --dtype f32
fi
# The WGSL linear-attention chunk kernels (4×4 blocks over vec4 slabs, eleventh session), two-pass
# and one-pass, at flash-linear-attention's shapes beside the CUDA rows.
bench wgpu-linear_attn 90 --backend wgpu --op linear_attn --reps 5 --seq 4096,8192
FFKERN_LINATTN_KERNEL=fused bench wgpu-linear_attn-fused 90 --backend wgpu --op linear_attn --reps 5 --seq 4096,8192
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys, os
names = sorted(f[6:-5] for f in os.listdir(sys.argv[1]) if f.startswith("bench-") and f.endswith(".json"))
for be in names:
    p = os.path.join(sys.argv[1], f"bench-{be}.json")
    try:
        recs = json.load(open(p))
    except Exception as e:
        print(f"{be}: no bench json ({e})"); continue
    for r in recs:
        base = f"  {r['baseline']}: {r['baseline_s']*1e3:.3f} ms, ours/theirs speed {r['vs_baseline']:.2f}" if r.get("baseline_s") else ""
        rf = r.get("roofline_fraction")
        print(f"{be:22} {r['op']:5} {r['dtype']:5} {r['shape']:32} {r['median_s']*1e3:9.3f} ms {r['gflops']/1e3:8.1f} TFLOP/s {r['gbps']:8.1f} GB/s roof {rf if rf is None else round(rf*100,1)}%{base}")
PY
