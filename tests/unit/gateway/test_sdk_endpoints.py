"""The official ``openai`` SDK, sync and async, unchanged, against the gateway in front of a
simulated vLLM node: chat, completions, embeddings and models, streamed and not."""

from tests.unit.gateway.conftest import Gateway, StartGateway
from tests.unit.gateway.fakes import FakeServices
from tests.unit.gateway.sdk import KINDS, Sdk
from tests.unit.gateway.sims import SIM_MODEL, SimFarm

EMBED_MODEL = "cic-sim-embed"  # an embedding model in the fake catalog

MESSAGES = [{"role": "user", "content": "Name three colours."}]


async def _clients(gateway: Gateway) -> list[Sdk]:
    _, _, key = await gateway.new_key()
    return [Sdk(kind, f"{gateway.url}/v1", key) for kind in KINDS]


async def test_chat(sim_gateway: Gateway) -> None:
    for sdk in await _clients(sim_gateway):
        answer = await sdk.run(
            lambda c: c.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, max_tokens=6)
        )
        assert answer.object == "chat.completion" and answer.model == SIM_MODEL
        assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content
        assert answer.usage.completion_tokens == 6 and answer.usage.prompt_tokens > 0

        chunks = await sdk.run(
            lambda c: c.chat.completions.create(
                model=SIM_MODEL,
                messages=MESSAGES,
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == answer.choices[0].message.content, "the simulator is deterministic"
        assert chunks[-1].choices == [] and chunks[-1].usage == answer.usage


async def test_completions(sim_gateway: Gateway) -> None:
    for sdk in await _clients(sim_gateway):
        answer = await sdk.run(
            lambda c: c.completions.create(model=SIM_MODEL, prompt="Once upon", max_tokens=5)
        )
        assert answer.object == "text_completion" and answer.choices[0].text
        assert answer.usage.completion_tokens == 5

        chunks = await sdk.run(
            lambda c: c.completions.create(
                model=SIM_MODEL, prompt="Once upon", max_tokens=5, stream=True
            )
        )
        assert "".join(c.choices[0].text for c in chunks) == answer.choices[0].text
        assert all(c.usage is None for c in chunks)


async def test_embeddings(
    start_gateway: StartGateway, services: FakeServices, sims: SimFarm
) -> None:
    sim = await sims.start(EMBED_MODEL)
    services.scheduler.add_node("sim-embed", EMBED_MODEL, sim.endpoint)
    sim_gateway = await start_gateway()
    for count, sdk in enumerate(await _clients(sim_gateway), start=1):
        answer = await sdk.run(
            lambda c: c.embeddings.create(model=EMBED_MODEL, input=["first text", "second text"])
        )
        assert [d.index for d in answer.data] == [0, 1]
        assert all(len(d.embedding) == 32 for d in answer.data)
        assert answer.usage.prompt_tokens > 0
        event = (await sim_gateway.services.billing.wait_for_events(count))[-1]
        assert (event.prompt_tokens, event.completion_tokens) == (answer.usage.prompt_tokens, 0)


async def test_models(sim_gateway: Gateway) -> None:
    for sdk in await _clients(sim_gateway):
        models = await sdk.run(lambda c: c.models.list())
        assert [m.id for m in models.data] == [SIM_MODEL]
        assert models.data[0].object == "model"
