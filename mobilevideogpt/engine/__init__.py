"""The CPU inference engine: how the language model's weights are stored and read (`lowp`: bf16 / int8, with the
compiled decode-step kernel of `linear_cpu`), int8 x int8 matrix products for w8a8 prefills and encoders
(`int8_matmul`), the decode-step KV cache and attention (`decoding`), the compiled
selective scan VideoMamba uses on the CPU (`scan_cpu`), and the private, verified build of those C++ kernels
(`native`, sources in `csrc/`). It knows nothing of the Mobile-VideoGPT architecture: `model/` uses it."""
