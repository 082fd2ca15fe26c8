"""The end of a benchmark that measures rows one after another: the machine's load beside them (a
timing on a busy machine is slower, so the record says how busy it was), and the record written
to OUT/<name> when --out is given."""
import os

from nanogpt.train import write_json


def finish_rows(rows, out, name):
    """Print the 1-minute load average and, if out is a folder, write {"rows", load, cores} to out/name."""
    load, cores = os.getloadavg()[0], os.cpu_count()
    print(f"load average (1 min) {load:.1f} on {cores} cores: timings on a busy machine are slower")
    if out:
        os.makedirs(out, exist_ok=True)
        write_json({"rows": rows, "load_average_1min": load, "cpu_count": cores}, os.path.join(out, name))
    return rows
