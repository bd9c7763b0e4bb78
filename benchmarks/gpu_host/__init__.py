"""What one kind of GPU host needs around the GPU suites: calls cut off after a time limit (so a
long tune runs in the background and later calls wait for it), and files carried in and out of a
fresh machine (a tuning database, a kernel cache). Every path is an argument or an environment
variable; `python -m benchmarks gpu-host --help` lists them with their defaults.
"""
