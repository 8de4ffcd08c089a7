# Sourced by dev.sh and test.sh: start_moto PORT starts moto on loopback and waits for it.
# It exports AWS_ENDPOINT_URL and dummy credentials, and stops moto when the shell exits.

start_moto() {
  local port=$1
  mkdir -p .dev
  .venv/bin/moto_server -H 127.0.0.1 -p "$port" >.dev/moto.log 2>&1 &
  MOTO_PID=$!
  trap 'kill $MOTO_PID 2>/dev/null; wait $MOTO_PID 2>/dev/null' EXIT
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then
      break
    fi
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      echo "moto did not start:" >&2
      cat .dev/moto.log >&2
      exit 1
    fi
    sleep 0.1
  done
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  unset AWS_PROFILE AWS_SESSION_TOKEN
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
