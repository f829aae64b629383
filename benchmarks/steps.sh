# Sourced by the GPU scripts: `step NAME MAX_SECONDS COMMAND...` runs COMMAND for at most
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
