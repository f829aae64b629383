# Sourced by the GPU scripts. `steps_init SCRIPT DEFAULT_SECONDS "DEFAULT STEPS" "$@"` reads the
# script's arguments OUT [SECONDS] [STEP...] into $out (made), $budget and $steps, and starts the
# clock. `step NAME MAX_SECONDS COMMAND...` runs COMMAND for at most
# MAX_SECONDS of what is left of $budget (seconds since SECONDS=0), its output in $out/NAME.log,
# and skips it once less than 20 s are left, or when $steps (" a b ") is set and does not name it.
step() {
  local name=$1 most=$2 left=$((budget - SECONDS))
  shift 2
  [[ -z ${steps:-} || $steps == *" $name "* ]] || return 0
  if ((left < 20)); then echo "$name: skipped (time budget spent)"; return; fi
  timeout $((most < left ? most : left)) "$@" > "$out/$name.log" 2>&1
  echo "$name: rc=$? at ${SECONDS} s"
}

steps_init() {
  local script=$1 default_budget=$2 default_steps=$3
  shift 3
  out=${1:?usage: $script OUT [SECONDS] [STEP...]}
  budget=${2:-$default_budget}
  steps=" ${*:3} "
  [[ $steps == "  " ]] && steps=" $default_steps "
  mkdir -p "$out"
  SECONDS=0
}
