# Sourced by dev.sh, test.sh and bench.sh: start_moto PORT starts moto on loopback with IAM
# enforced (scripts/moto_server.py) and waits for it. It exports AWS_ENDPOINT_URL and the keys
# of the `operator` user (allowed everything; provisioning uses it, and each function then runs
# under a user of its own), MOTO_DIR (the operator's credentials and moto's access log), and
# stops moto when the shell exits.

start_moto() {
  local port=$1
  MOTO_DIR="$PWD/.dev/moto-$port"
  rm -rf "$MOTO_DIR"
  mkdir -p "$MOTO_DIR"
  .venv/bin/python scripts/moto_server.py 127.0.0.1 "$port" \
    "$MOTO_DIR/operator-credentials" "$MOTO_DIR/access.jsonl" >"$MOTO_DIR/moto.log" 2>&1 &
  MOTO_PID=$!
  trap 'kill $MOTO_PID 2>/dev/null; wait $MOTO_PID 2>/dev/null' EXIT
  for _ in $(seq 1 150); do
    if [ -f "$MOTO_DIR/operator-credentials" ] &&
      curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then
      break
    fi
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      echo "moto did not start:" >&2
      cat "$MOTO_DIR/moto.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  export MOTO_DIR
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  use_operator "$MOTO_DIR"
}

# use_operator DIR: exports the keys of the `operator` user of the moto whose files are in
# DIR (written by scripts/moto_server.py), and the region.
use_operator() {
  AWS_ACCESS_KEY_ID=$(sed -n 's/^aws_access_key_id = //p' "$1/operator-credentials")
  AWS_SECRET_ACCESS_KEY=$(sed -n 's/^aws_secret_access_key = //p' "$1/operator-credentials")
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_SHARED_CREDENTIALS_FILE
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
