# Sourced by the scripts that start units. thresholds EXIT VALUE [EXIT VALUE ...]:
# the 15 thresholds as --thresholds takes them, those values at those exits, 1.0 at the others.
thresholds() {
  local out=() e
  for e in $(seq 1 15); do out+=(1.0); done
  while [ $# -gt 1 ]; do out[$(($1 - 1))]=$2; shift 2; done
  (IFS=,; echo "${out[*]}")
}
