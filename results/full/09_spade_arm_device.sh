#!/bin/bash
# Notebook 09, full profile: the arm add_spade_real_75 (R25 + SPADE tiles painted from R75's real masks) x seeds 0-4
# on one GPU. No full-profile SPADE existed, so this call first trains notebook 07's pixel SPADE with the full
# profile's model, batch and data for SPADE_LIMIT seconds (checkpoints every 250 steps; a run the limit stops is
# exported from its last checkpoint: `train spade --resume --steps N`), paints the arm's bank once, then trains the
# five segmenters at once. Test counts, the bank and the SPADE's loss log come back; scored on the CPU with
# `python -m histolab_utils.score segmenters`.
# Carried: .whl (diffusers, importlib_metadata, monai, shapely wheels) and .dev09/raw/hgsc (the two labelled images).
# Run: BUDGET=560 SPADE_LIMIT=300 bash results/full/09_spade_arm_device.sh   (dry run on a CPU: PROFILE=smoke NO_INSTALL=1 PY=.venv/bin/python
#   HISTO_RUNS_DIR=/tmp/dry OUT=/tmp/dry-out)
set -u
T0=$(date +%s)
PROFILE=${PROFILE:-full}
ARM=add_spade_real_75
left() { echo $(( ${BUDGET:-560} - ($(date +%s) - T0) )); }
rm -rf /tmp/seg /tmp/back
if [ -d .whl ] && [ -z "${NO_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD HISTO_DATA_DIR=$PWD/.dev09
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
PY=${PY:-python3}
LOG=$OUT/device.log
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee $LOG
$PY -c "import torch, diffusers, accelerate, monai; print(torch.__version__, diffusers.__version__, accelerate.__version__, monai.__version__)" | tee -a $LOG

RUNS=${HISTO_RUNS_DIR:-runs}/$PROFILE
SPADE=$RUNS/spade-pixel
HISTO_OVERRIDES=spade.checkpoint_every=${SPADE_EVERY:-250} timeout ${SPADE_LIMIT:-300} $PY -m histolab_utils.train spade \
  --profile $PROFILE --space pixel ${SPADE_STEPS:+--steps $SPADE_STEPS} --out $SPADE > $OUT/spade.log 2>&1
echo "spade rc=$? at $(( $(date +%s) - T0 )) s" | tee -a $LOG
if [ ! -d $SPADE/pipeline ]; then
  last=$(ls $SPADE/checkpoints | sed 's/step-//' | sort -n | tail -1)
  HISTO_OVERRIDES=spade.checkpoint_every=${SPADE_EVERY:-250} $PY -m histolab_utils.train spade --profile $PROFILE \
    --space pixel --steps $last --resume --out $SPADE >> $OUT/spade.log 2>&1
  echo "spade exported at step $last (rc=$?) at $(( $(date +%s) - T0 )) s" | tee -a $LOG
fi
grep -v "it/s\]$" $OUT/spade.log | tail -3 | tee -a $LOG

# the arm's bank, made exactly as `train segmenter` makes it (then each run reads it from the cache)
$PY - <<EOF 2>&1 | tail -3 | tee -a $LOG
from histolab_utils.config import load_config
from histolab_utils.paths import runs_dir
from histolab_utils.report import chosen_generator_settings
from histolab_utils.results import generator_folders
from histolab_utils.segmentation.experiments import (arm_catalogue, generators_for, load_generators, needed_pool_pairs,
                                                     real_pool, synthetic_bank)
from histolab_utils.config import pick_device
config = load_config("$PROFILE")
s = config.segmentation
pool = real_pool(s.tile_size, s.downsample, config.seed, s.n_real)
needed = needed_pool_pairs([arm_catalogue(s.addition, s.replacement)["$ARM"]], pool)
generators = load_generators(generator_folders(config.name), config.masks, config.spade, config.joint, pick_device(),
                             **chosen_generator_settings(config.name), only=generators_for(needed))
bank = synthetic_bank("spade_real", pool, generators, needed["spade_real"], runs_dir(config.name) / "segmentation" / "synthetic",
                      seed=config.seed)
print(len(bank), "tiles painted; settings (guidance, steps):", generators.spade_settings)
EOF
echo "bank at $(( $(date +%s) - T0 )) s" | tee -a $LOG

run() { s=$1; t0=$(date +%s)
  timeout $RUN_LIMIT $PY -m histolab_utils.train segmenter --profile $PROFILE --arm $ARM --seed $s \
     --out /tmp/seg/$ARM/seed-$s > /tmp/seg-$s.log 2>&1
  echo "rc=$? $(( $(date +%s) - t0 )) s: $(grep '^arm ' /tmp/seg-$s.log | tail -1)$(grep -i error /tmp/seg-$s.log | tail -2)"; }
export -f run; export ARM PROFILE PY RUN_LIMIT=$(( $(left) - 15 ))
echo "segmenters get $RUN_LIMIT s" | tee -a $LOG
printf "%s\n" 0 1 2 3 4 | xargs -P 5 -n 1 bash -c 'run "$0"' | tee -a $LOG
mkdir -p /tmp/back && cp $SPADE/loss.csv $SPADE/pipeline/*.json /tmp/back/ 2>/dev/null
cp $RUNS/segmentation/synthetic/*.npz /tmp/back/ 2>/dev/null
cd /tmp && tar czf $OUT/full09-spade-arm.tgz --exclude=checkpoints --exclude=model.pt seg back
echo "done in $(( $(date +%s) - T0 )) s" | tee -a $LOG
