"""A stand-in simulator that starts and runs but never opens its port (launch timeouts)."""

import time

if __name__ == "__main__":
    print("never serving", flush=True)
    time.sleep(3600)
