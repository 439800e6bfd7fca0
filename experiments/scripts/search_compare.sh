#!/usr/bin/env bash
# Issue 10 acceptance: MOASHA against the single-fidelity Pareto search on real EG1800, CPU,
# equal wall-clock budget and sampler seed, each on one core, side by side. Every member of
# both final fronts is retrained at the top rung (`search`) with 2 further seeds.
# Resumable: rerunning continues both studies from their storage (time_budget_s counts from
# each study's first start). Output: runs/compare/ (copied into experiments/results/search/).
#   BUDGET=1800 experiments/scripts/search_compare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${EG1800_ROOT:?set EG1800_ROOT to the EG1800 folder}"
BUDGET=${BUDGET:-1800}
OUT=runs/compare
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
common=(study.seed=0 study.n_trials=500 study.time_budget_s="$BUDGET" study.confirm_seeds=2
        study.confirm_rung=search study.extra_costs=false train.threads=1 progress=false
        study.storage="sqlite:///$OUT/studies.db" study.output_dir="$OUT")
nas-search study.name=sinet-single study.scheduler=none fidelity=search "${common[@]}" \
  > "$OUT/sinet-single.log" 2>&1 &
p1=$!
nas-search study.name=sinet-moasha study.scheduler=mo_asha 'study.rungs=[search_half,search]' study.eta=3 \
  "${common[@]}" > "$OUT/sinet-moasha.log" 2>&1 &
p2=$!
rc=0; wait $p1 || rc=$?; wait $p2 || rc=$?
nas-pareto 'studies=[sinet-single,sinet-moasha]' storage="sqlite:///$OUT/studies.db" output_dir="$OUT/pareto" \
  > "$OUT/pareto.log" 2>&1 || rc=$?
exit $rc
