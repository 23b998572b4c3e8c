# Shared option parsing of the benchmark scripts (sourced, not run).

# Reads a leading `-p PARALLELISM` option from the arguments given after USAGE: sets `parallelism`
# (default 1) and `options_used`, how many arguments the options took (the caller shifts them).
read_parallelism_option() {
  local usage=$1
  shift
  parallelism=1
  local OPTIND=1 option
  while getopts p: option; do
    case "$option" in
      p) parallelism=$OPTARG ;;
      *) echo "$usage" >&2; exit 2 ;;
    esac
  done
  if ! [[ "$parallelism" =~ ^[1-9][0-9]*$ ]]; then
    echo "-p $parallelism: the parallelism is a whole number from 1" >&2
    exit 2
  fi
  options_used=$((OPTIND - 1))
}
