"""Section 5 and Appendix C of the paper: exact kernel interpolation (Table 3) and the
finite-sample expressivity construction (Theorem 1).

- `solve`: the Gaussian kernel system K alpha = Y (optionally K + lambda I), built and
  factorised in place in float64 on the GPU when there is one, else on the CPU;
- `features`: what the kernel sees: raw pixels, a scattering transform (kymatio), random
  conv-net features;
- `theorem1`: the depth-two ReLU network with 2n + d weights that fits n labels exactly;
- `__main__`: the CLIs the workflow's kernel rules call (`python -m rethink.kernel ...`).
"""
