-- What the node agent last said of vLLM's /health on its machine (NULL: it has not said).
ALTER TABLE nodes ADD COLUMN agent_vllm_healthy boolean;
