"""Helper process for the clean-up tests: set up an emulation of 2 devices, start `sleep` in
each, print the pids and namespaces as one JSON line, then wait to be signalled or killed."""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from ddnn.emulation.calibrate import Calibration
from ddnn.emulation.profiles import load_device_profile, load_link_profile
from ddnn.emulation.session import EmulatedDevices


def main() -> None:
    sink = socket.create_server(("127.0.0.1", 0))
    emu = EmulatedDevices(
        2,
        broker=sink.getsockname(),
        device=load_device_profile("pi3"),
        link=load_link_profile("wifi"),
        calibration=Calibration(host_gflops=100.0),
    )
    with emu:
        procs = [emu.popen(i, ["sleep", "60"]) for i in range(2)]
        state = {"pid": os.getpid(), "children": [p.pid for p in procs], "urls": [
            emu.broker_url(i) for i in range(2)
        ]}  # fmt: skip
        sys.stdout.write(json.dumps(state) + "\n")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
    sink.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
