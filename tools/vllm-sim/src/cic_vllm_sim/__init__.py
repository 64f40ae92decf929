"""cic-vllm-sim: a simulated vLLM OpenAI server for development, tests and benchmarks."""
