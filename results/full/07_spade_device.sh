#!/bin/bash
# Notebook 07, full profile, the pixel SPADE alone, fitted to one device call: train notebook 07's pixel SPADE with
# the full profile's model, data and recipe for SPADE_LIMIT seconds (checkpoints every 250 steps; a run the limit
# stops is exported from its last checkpoint, `train spade --resume --steps N`), then paint notebook 07's validation
# pairs and held-out grid at every guidance scale of the profile with DDIM (`python -m histolab_utils.score spade-paint`).
# The painted sets, the loss log and the pipeline's config come back; the weights stay (no room in what returns).
# Chosen and scored on the CPU, where the FID network is: `python -m histolab_utils.score spade-painted`.
# Carried: .whl (diffusers, importlib_metadata, monai, shapely wheels) and .dev07/raw/hgsc (the two labelled images).
# Run: SPADE_LIMIT=380 bash results/full/07_spade_device.sh   (2026-12-04: train 380 s, then paint at PAINT_N_EVAL=430:
#   215 validation pairs and the 215-tile held-out grid, about 2 minutes on an H200; at n_eval 1,000 it is about 3)
# Dry run on a CPU: PROFILE=smoke NO_INSTALL=1 PY=.venv/bin/python HISTO_RUNS_DIR=/tmp/dry OUT=/tmp/dry-out SPADE_STEPS=10 SPADE_EVERY=5
set -u
T0=$(date +%s)
PROFILE=${PROFILE:-full}
PAINT_N_EVAL=${PAINT_N_EVAL:-430}  # spade.n_eval while painting (score with the same HISTO_OVERRIDES)
if [ -d .whl ] && [ -z "${NO_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD HISTO_DATA_DIR=$PWD/.dev07
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
mkdir -p $OUT
LOG=$OUT/device.log
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee $LOG
$PY -c "import torch, diffusers, accelerate; print(torch.__version__, diffusers.__version__, accelerate.__version__)" | tee -a $LOG

RUNS=${HISTO_RUNS_DIR:-runs}/$PROFILE
SPADE=$RUNS/spade-pixel
HISTO_OVERRIDES=spade.checkpoint_every=${SPADE_EVERY:-250} timeout ${SPADE_LIMIT:-330} $PY -m histolab_utils.train spade \
  --profile $PROFILE --space pixel ${SPADE_STEPS:+--steps $SPADE_STEPS} --out $SPADE > /tmp/spade.log 2>&1
echo "spade rc=$? at $(( $(date +%s) - T0 )) s" | tee -a $LOG
if [ ! -d $SPADE/pipeline ]; then
  last=$(ls $SPADE/checkpoints 2>/dev/null | sed 's/step-//' | sort -n | tail -1)
  [ -n "$last" ] || { echo "no checkpoint in $SPADE/checkpoints: train longer than SPADE_LIMIT" | tee -a $LOG; exit 4; }
  HISTO_OVERRIDES=spade.checkpoint_every=${SPADE_EVERY:-250} $PY -m histolab_utils.train spade --profile $PROFILE \
    --space pixel --steps $last --resume --out $SPADE >> /tmp/spade.log 2>&1
  echo "spade exported at step $last (rc=$?) at $(( $(date +%s) - T0 )) s" | tee -a $LOG
fi
tr '\r' '\n' < /tmp/spade.log | grep -v "it/s\]$" | tail -4 | tee -a $LOG

HISTO_OVERRIDES=${PAINT_N_EVAL:+spade.n_eval=$PAINT_N_EVAL} \
  $PY -m histolab_utils.score spade-paint $SPADE/pipeline --profile $PROFILE --out /tmp/07_painted_sets.npz --batch-size 512 \
  2>&1 | tail -2 | tee -a $LOG
echo "painted at $(( $(date +%s) - T0 )) s" | tee -a $LOG
# what comes back is at most 8 files of 16 MiB: the painted sets in 15 MB parts (`cat` joins them), the run's small files
(cd $OUT && split -b 15M -d /tmp/07_painted_sets.npz 07_painted_sets.npz.part-)
(cd $SPADE && tar czf $OUT/07_spade_run.tgz loss.csv pipeline/*.json pipeline/*/*.json)
sha256sum /tmp/07_painted_sets.npz | tee -a $LOG
ls -la $OUT | tee -a $LOG
echo "done in $(( $(date +%s) - T0 )) s" | tee -a $LOG
