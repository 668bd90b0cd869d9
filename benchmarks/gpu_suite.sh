#!/usr/bin/env bash
# Training-step throughput on one GPU: ours (benchmarks/throughput.py) against PyTorch peers
# (benchmarks/peers/), four rows at bf16, for the GPU table of BENCHMARKS.md.
#
#   OUT=/tmp/gpu_suite bash benchmarks/gpu_suite.sh           # from the repository root
#   SMOKE=1 OUT=/tmp/gpu_smoke bash benchmarks/gpu_suite.sh   # tiny rows, 2 steps (CPU is fine)
#
# Rows (batch x seq):  clm   GPT-2 small 124M, vocab 50304, 32 x 1024   peer: nanoGPT-style GPT-2
#                      mlm   BERT-base MLM, vocab 30522, 256 x 128       peer: HF BertForMaskedLM
#                      mlm_nsp  BERT-base MLM+NSP, 32 x 512              peer: HF BertForPreTraining
#                      plm   XLNet-base size, K=6, 16 x 512              peer: HF XLNetLMHeadModel
# then, if time is left, the host pipeline on the builtin corpus (one core). A row of ours that
# runs out of device memory is run again with --config.model.remat=dots, and noted.
#
# Installs nothing: ours needs the project's requirements (pip install -e .) with a GPU jax;
# the peers need torch (and transformers for the HF ones) and are skipped when it does not
# import. Each run has a timeout and the suite a total budget; a run that would start with
# less than MIN_ROW_S left is skipped. Writes under $OUT: env.txt (versions), suite.log (every
# run's output), results.jsonl (one JSON line per row and side) and summary.md (the table).
#
# Settings (environment): OUT (default a new /tmp/gpu_suite.*), BUDGET_S (total, default 480),
# ROW_TIMEOUT_S (per run, 150), MIN_ROW_S (45; 10 with SMOKE=1), STEPS (timed steps, 20),
# PEER_WARMUP (untimed peer steps, 5), ROWS (a subset, e.g. "clm mlm"), SIDES ("ours peer"),
# PYTHON (ours, default python3), PEER_PYTHON (peers, default $PYTHON), PEER_COMPILE (1; 0 runs
# the peers eagerly), HOST_PIPELINE (1; 0 skips it), SMOKE (1: tiny shapes, 2 steps, peers
# eager unless PEER_COMPILE=1, CPU allowed).

set -u
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-0}
BUDGET_S=${BUDGET_S:-480}
ROW_TIMEOUT_S=${ROW_TIMEOUT_S:-150}
ROWS=${ROWS:-clm mlm mlm_nsp plm}
SIDES=${SIDES:-ours peer}
PYTHON=${PYTHON:-python3}
PEER_PYTHON=${PEER_PYTHON:-$PYTHON}
HOST_PIPELINE=${HOST_PIPELINE:-1}
if [ "$SMOKE" = 1 ]; then
  STEPS=${STEPS:-2}
  PEER_WARMUP=${PEER_WARMUP:-1}
  PEER_COMPILE=${PEER_COMPILE:-0}
  MIN_ROW_S=${MIN_ROW_S:-10}
else
  STEPS=${STEPS:-20}
  PEER_WARMUP=${PEER_WARMUP:-5}
  PEER_COMPILE=${PEER_COMPILE:-1}
  MIN_ROW_S=${MIN_ROW_S:-45}
fi
for row in $ROWS; do
  case $row in
    clm|mlm|mlm_nsp|plm) ;;
    *) echo "Unknown row '$row' in ROWS: choose from clm mlm mlm_nsp plm." >&2; exit 2 ;;
  esac
done
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

OUT=${OUT:-$(mktemp -d /tmp/gpu_suite.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_suite_work.XXXXXX)
STATUS="$WORK/status.tsv"
: > "$STATUS"
: > "$OUT/suite.log"
START=$(date +%s)

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[$(printf '%4d' "$(elapsed)")s] $*" | tee -a "$OUT/suite.log"; }

summarize() {
  "$PYTHON" benchmarks/peers/summarize.py --status "$STATUS" --jsonl "$OUT/results.jsonl" \
    --markdown "$OUT/summary.md" "$@"
}

# record ROW SIDE STATE RC WALL LOG NOTE
record() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${7:-}" >> "$STATUS"
  summarize > /dev/null 2>&1
}

# run_row ROW SIDE COMMAND...: runs under a timeout within the remaining budget.
# TRY (a name) gives a rerun its own log; NOTE goes into the row's status line.
run_row() {
  local row=$1 side=$2 log="$WORK/$1.$2${TRY:+.$TRY}.log"
  shift 2
  local left=$(( BUDGET_S - $(elapsed) ))
  if [ "$left" -lt "$MIN_ROW_S" ]; then
    say "skip $row $side: ${left}s left of the ${BUDGET_S}s budget"
    record "$row" "$side" skipped - 0 "" "budget: ${left}s left"
    return
  fi
  local limit=$(( left < ROW_TIMEOUT_S ? left : ROW_TIMEOUT_S ))
  say "run  $row $side (timeout ${limit}s): $*"
  local t0 rc state
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  local wall=$(( $(date +%s) - t0 ))
  case $rc in
    0) state=ok ;;
    124|137) state=timeout ;;
    *) state=failed ;;
  esac
  { echo "==== $row $side: $state (exit $rc, ${wall}s): $*"; cat "$log"; echo; } >> "$OUT/suite.log"
  say "done $row $side: $state in ${wall}s"
  if [ "$state" = ok ]; then
    grep -E '^\{.*"tokens_per_sec"' "$log" | tail -n 1 | cut -c1-400
  else
    tail -n 3 "$log"
  fi
  record "$row" "$side" "$state" "$rc" "$wall" "$log" "${NOTE:-}"
}

# --- environment --------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  smoke: $SMOKE  steps: $STEPS  budget: ${BUDGET_S}s"
  echo "git: $(git rev-parse --short HEAD 2> /dev/null)," \
    "$(git status --porcelain 2> /dev/null | wc -l) changed file(s)"
  echo "host: $(uname -srm), $(nproc) cores"
  if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  else
    echo 'nvidia-smi: not found'
  fi
  echo "C compiler (Triton and Inductor, behind torch.compile, need one):" \
    "$(command -v gcc || command -v cc || echo none)"
  echo "ours ($PYTHON):"
  "$PYTHON" - <<'EOF' 2>&1
import importlib
for name in ('jax', 'jaxlib', 'flax', 'optax', 'ml_collections', 'orbax.checkpoint', 'numpy'):
  try:
    module = importlib.import_module(name)
    print(f'  {name} {getattr(module, "__version__", "?")}')
  except Exception as error:  # pylint: disable=broad-exception-caught
    print(f'  {name}: MISSING ({type(error).__name__}: {error})')
try:
  import benchmarks.throughput  # pylint: disable=unused-import
  print('  project imports: ok')
  import jax
  print(f'  jax devices: {jax.devices()}')
  print(f'  jax platform: {jax.devices()[0].platform}')
except Exception as error:  # pylint: disable=broad-exception-caught
  print(f'  project imports: no ({type(error).__name__}: {error})')
EOF
  echo "peers ($PEER_PYTHON):"
  "$PEER_PYTHON" - <<'EOF' 2>&1
try:
  import torch
  print(f'  torch {torch.__version__} (CUDA {torch.version.cuda})' +
        (f', {torch.cuda.get_device_name(0)}' if torch.cuda.is_available() else ''))
  print(f'  torch cuda available: {torch.cuda.is_available()}')
except Exception as error:  # pylint: disable=broad-exception-caught
  print(f'  torch: MISSING ({type(error).__name__}: {error})')
try:
  import transformers
  print(f'  transformers {transformers.__version__}')
except Exception as error:  # pylint: disable=broad-exception-caught
  print(f'  transformers: MISSING ({type(error).__name__}: {error})')
EOF
} > "$OUT/env.txt" 2>&1
tee -a "$OUT/suite.log" < "$OUT/env.txt"
say "writing to $OUT"

# Which sides can run (read off env.txt): ours needs the project's modules and, unless SMOKE=1,
# a GPU jax; the peers need torch (transformers for the HF ones) and, unless SMOKE=1, CUDA.
env_line() { grep -m 1 "^  $1" "$OUT/env.txt" | sed "s/^  $1//"; }
OURS_SKIP=''
if [ "$(env_line 'project imports: ')" != ok ]; then
  OURS_SKIP="the project does not import $(env_line 'project imports: no ')"
elif [ "$SMOKE" != 1 ] && [ "$(env_line 'jax platform: ')" != gpu ]; then
  OURS_SKIP="jax sees no GPU (platform '$(env_line 'jax platform: ')'; pip install -e .[gpu])"
fi
PEER_SKIP=''
HF_SKIP=''
if [ -z "$(env_line 'torch cuda available: ')" ]; then
  PEER_SKIP="torch does not import with $PEER_PYTHON $(env_line 'torch: MISSING ')"
elif [ "$SMOKE" != 1 ] && [ "$(env_line 'torch cuda available: ')" != True ]; then
  PEER_SKIP='torch sees no CUDA device'
elif [ -n "$(env_line 'transformers: MISSING')" ]; then
  HF_SKIP="transformers does not import with $PEER_PYTHON"
fi
[ -n "$OURS_SKIP" ] && say "ours skipped: $OURS_SKIP"
[ -n "$PEER_SKIP" ] && say "peers skipped: $PEER_SKIP"
[ -n "$HF_SKIP" ] && say "Hugging Face peers skipped: $HF_SKIP"

# --- the rows -----------------------------------------------------------------------------
OURS=("$PYTHON" -m benchmarks.throughput --json --steps "$STEPS")
PEER_ARGS=(--steps "$STEPS" --warmup "$PEER_WARMUP")
[ "$PEER_COMPILE" = 1 ] || PEER_ARGS+=(--no-compile)
OURS_SMOKE=()
PEER_SMOKE=()
if [ "$SMOKE" = 1 ]; then
  OURS_SMOKE=(--config.model.num_layers=2 --config.model.embed_dim=64 --config.model.num_heads=2
              --config.model.mlp_dim=256 --config.batch_size=2 --config.seq_len=64
              --config.data.vocab_size=512)
  PEER_SMOKE=(--layers 2 --width 64 --heads 2 --vocab 512 --batch 2 --seq 64)
fi

ours_args() {
  case $1 in
    clm) echo --config configs/clm.py:gpt2_small --config.data.vocab_size=50304 ;;
    # BERT-base as MLM alone (the peer's BertForMaskedLM), on full rows of one segment each
    # (attention by length, as the peer attends with no mask).
    mlm) echo --config configs/bert.py:bert_base --config.objective=mlm \
           --config.data.attend_across_documents=True ;;
    mlm_nsp) echo --config configs/bert.py:bert_base --config.seq_len=512 --config.batch_size=32 ;;
    plm) echo --config configs/plm.py:xlnet_base --config.batch_size=16 ;;
  esac
}

peer_args() {
  case $1 in
    clm) echo benchmarks/peers/gpt2_nanogpt.py ;;
    mlm) echo benchmarks/peers/hf_bert.py --objective mlm ;;
    mlm_nsp) echo benchmarks/peers/hf_bert.py --objective mlm_nsp --batch 32 --seq 512 ;;
    plm) echo benchmarks/peers/hf_xlnet.py ;;
  esac
}

for row in $ROWS; do
  case " $SIDES " in *" ours "*)
    if [ -n "$OURS_SKIP" ]; then
      record "$row" ours skipped - 0 "" "$OURS_SKIP"
    else
      extra=()
      # gpt2_small's CLM loss runs 128 positions at a time; a smoke window is shorter.
      [ "$SMOKE" = 1 ] && [ "$row" = clm ] && extra=(--config.clm.loss_chunk=32)
      # shellcheck disable=SC2046
      run_row "$row" ours "${OURS[@]}" $(ours_args "$row") "${OURS_SMOKE[@]}" "${extra[@]}"
      # Every preset runs without rematerialisation; one that runs out of device memory is run
      # again saving only the matmuls' outputs, and the row says so.
      if grep -qE 'RESOURCE_EXHAUSTED|[Oo]ut of memory' "$WORK/$row.ours.log" 2> /dev/null; then
        say "$row ours ran out of device memory: again with --config.model.remat=dots"
        # shellcheck disable=SC2046
        TRY=remat_dots NOTE='config.model.remat=dots (out of memory without)' run_row "$row" \
          ours "${OURS[@]}" $(ours_args "$row") "${OURS_SMOKE[@]}" "${extra[@]}" \
          --config.model.remat=dots
      fi
    fi ;;
  esac
  case " $SIDES " in *" peer "*)
    if [ -n "$PEER_SKIP" ]; then
      record "$row" peer skipped - 0 "" "$PEER_SKIP"
    elif [ -n "$HF_SKIP" ] && [ "$row" != clm ]; then
      record "$row" peer skipped - 0 "" "$HF_SKIP"
    else
      # shellcheck disable=SC2046
      run_row "$row" peer "$PEER_PYTHON" $(peer_args "$row") "${PEER_ARGS[@]}" "${PEER_SMOKE[@]}"
    fi ;;
  esac
done

# The format and length each row's host pipeline makes (SMOKE rows are all 64 long).
row_format() {
  local seq
  case $1 in
    clm) seq=1024; echo -n packed ;;
    mlm) seq=128; echo -n packed ;;
    mlm_nsp) seq=512; echo -n sentence_pairs ;;
    plm) seq=512; echo -n packed ;;
  esac
  [ "$SMOKE" = 1 ] && seq=64
  echo ":$seq"
}

if [ "$HOST_PIPELINE" = 1 ] && [ -z "$OURS_SKIP" ]; then
  batches=50
  [ "$SMOKE" = 1 ] && batches=5
  # What each of our measured rows consumed, so the host rates come with their ratio to it.
  consumes=()
  seq_lens=128,512
  [ "$SMOKE" = 1 ] && seq_lens=64
  for row in $ROWS; do
    log="$WORK/$row.ours.log"
    [ -f "$WORK/$row.ours.remat_dots.log" ] && log="$WORK/$row.ours.remat_dots.log"
    rate=$(grep -E '^\{.*"tokens_per_sec"' "$log" 2> /dev/null | tail -n 1 | "$PYTHON" -c \
      'import json, sys; print(round(json.loads(sys.stdin.read())["tokens_per_sec"]))' 2> /dev/null)
    [ -n "$rate" ] || continue
    consumes+=("$(row_format "$row")=$rate")
    [ "$row" = clm ] && [ "$SMOKE" != 1 ] && seq_lens=128,512,1024
  done
  consumes_arg=()
  [ ${#consumes[@]} -gt 0 ] && consumes_arg=(--consumes "$(IFS=,; echo "${consumes[*]}")")
  pin=()
  command -v taskset > /dev/null 2>&1 && pin=(taskset -c 0)  # one core: tokens/s per core
  run_row host_pipeline host "${pin[@]}" "$PYTHON" -m benchmarks.host_pipeline \
    --batches "$batches" --seq_lens "$seq_lens" --output "$WORK/pretok" "${consumes_arg[@]}"
fi

say "total ${BUDGET_S}s budget, $(elapsed)s used"
echo
summarize
rm -rf "$WORK"  # every run's output is in $OUT/suite.log
