"""Front ends: the CLI, the live console, screenshots, the gdb stub and the benchmark, on top of everything else."""
