"""The Python client of the sequential benchmark: requests with a Session
(one kept-alive connection), the same POST as cachectl's clear_cache, each
answer decoded with .json() and checked.

    /usr/bin/python3 bench/seq_requests.py BASE_URL KEY N [WARMUP]

Prints "calls_per_s <x>" and "cpu_us_per_call <y>" (the process's CPU time per
call) for the N timed calls after WARMUP untimed ones.
"""
import sys
import time

import requests


def main():
    if len(sys.argv) < 4:
        sys.stderr.write("usage: seq_requests.py BASE_URL KEY N [WARMUP]\n")
        return 2
    url = sys.argv[1] + "/v5/clear_cache"
    key, n = sys.argv[2], int(sys.argv[3])
    warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment, no .netrc
    headers = {"Accept": "application/json", "User-Agent": "bench-requests"}

    def run(count):
        for i in range(count):
            r = session.post(url, json={"key": key}, headers=headers)
            if r.status_code != 200 or r.json().get("status") != "success":
                sys.stderr.write("seq_requests.py: call %d failed: HTTP %d\n" % (i + 1, r.status_code))
                sys.exit(1)

    run(warmup)
    t0, c0 = time.perf_counter(), time.process_time()
    run(n)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    print("calls_per_s %.1f" % (n / t))
    print("cpu_us_per_call %.3f" % (c / n * 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
