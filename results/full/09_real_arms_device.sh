#!/bin/bash
# Notebook 09, full profile: the five arms that need no generator (real_25, classic_25, duplicated_25, real_100,
# classic_100) x seeds 0-4, P runs at once on one GPU; test counts come back, scored on the CPU.
# Carried: .whl (diffusers 0.42.1, importlib_metadata, monai 1.6.1, shapely 2.2.0 wheels) and .dev09/raw/hgsc (the two
# labelled images and their polygon parquet files from data/raw/hgsc). Run: P=13 RUN_LIMIT=420 bash full09.sh
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HISTO_DATA_DIR=$PWD/.dev09 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
LOG=$OUT/device.log
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $LOG
python3 -c "import torch, diffusers, accelerate, monai; print(torch.__version__, diffusers.__version__, accelerate.__version__, monai.__version__)" | tee -a $LOG
# draw and cache the pool and test grids once, so the parallel runs only read them
python3 -c "
from histolab_utils.config import load_config
from histolab_utils.segmentation.experiments import real_pool, heldout_tiles
s = load_config('full').segmentation
print(len(real_pool(s.tile_size, s.downsample, 0, s.n_real).pairs), 'pool tiles,', len(heldout_tiles(s.tile_size, s.downsample, 0, s.n_test)), 'test tiles')" 2>&1 | tail -2 | tee -a $LOG
echo "prepared in $(( $(date +%s) - T0 )) s" | tee -a $LOG
run() { a=$1; s=$2; t0=$(date +%s)
  timeout ${RUN_LIMIT:-400} python3 -m histolab_utils.train segmenter --profile full --arm $a --seed $s \
     --out /tmp/seg/$a/seed-$s > /tmp/seg-$a-$s.log 2>&1
  echo "rc=$? $(( $(date +%s) - t0 )) s: $(grep '^arm ' /tmp/seg-$a-$s.log | tail -1)$(grep -i error /tmp/seg-$a-$s.log | tail -2)"; }
export -f run
for s in 0 1 2 3 4; do for a in real_25 classic_25 duplicated_25 real_100 classic_100; do echo "$a $s"; done; done \
  | xargs -P ${P:-10} -n 2 bash -c 'run "$0" "$1"' | tee -a $LOG
cd /tmp && tar czf $OUT/full09-counts.tgz --exclude=checkpoints --exclude=model.pt seg
echo "done in $(( $(date +%s) - T0 )) s" | tee -a $LOG
