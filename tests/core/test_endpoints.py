"""Every path the backend serves: raw bodies in the request frames, path ids in ads, routing by path."""

from __future__ import annotations

import json
import os
import random

import pytest

from garage_p2p.core.capabilities import MAX_AD_BYTES, MAX_AD_MODELS, CapabilityAd, ModelOffer, make_ad, sign_ad
from garage_p2p.core.endpoints import ENDPOINT_PATHS, PATH_IDS, served_path_ids
from garage_p2p.core.errors import PeerFault
from garage_p2p.core.exchange import RequestReader, head_frame
from garage_p2p.core.identity import Identity
from garage_p2p.core.messages import RequestHead, encode_json
from garage_p2p.core.multipart import MultipartError, form_field, replace_field
from garage_p2p.core.receipts import request_digest
from garage_p2p.core.request_policy import no_candidate_error
from garage_p2p.core.routing import Router, RouteRequest
from garage_p2p.core.wire import FrameType, encode_frame

BOUNDARY = "----garage7d1f"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def new_identity() -> Identity:
    return Identity.from_seed(os.urandom(32))


def multipart(fields: dict[str, str], audio: bytes) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + audio
        + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def raw_head(raw: bytes, path: str = "/v1/audio/transcriptions") -> RequestHead:
    return RequestHead(
        request_id="r1",
        path=path,
        body={"model": "tiny"},
        timeout=30,
        body_bytes=len(raw),
        content_type=CONTENT_TYPE,
        raw=raw,
    )


def test_a_raw_body_travels_after_the_head_byte_for_byte():
    # 600 KiB of every byte value: three DATA frames, fed to the reader in odd slices.
    raw = multipart({"model": "tiny"}, bytes(range(256)) * 2400)
    wire = head_frame(raw_head(raw))
    reader = RequestReader(max_head_bytes=64 * 1024, max_body_bytes=1024 * 1024)
    head = None
    for i in range(0, len(wire), 7777):
        assert head is None
        head = reader.feed(wire[i : i + 7777])
    assert head is not None and head.raw == raw and head.content_type == CONTENT_TYPE
    assert b'"raw"' not in encode_json(head)  # never in the JSON


def test_a_head_waits_for_its_whole_body_and_refuses_more():
    raw = b'{"model":"tiny","input":"hi"}'
    head = RequestHead(request_id="r", path="/v1/embeddings", body={"model": "tiny"}, timeout=5, body_bytes=len(raw))
    reader = RequestReader()
    assert reader.feed(encode_frame(FrameType.HEAD, encode_json(head)) + encode_frame(FrameType.DATA, raw[:5])) is None
    with pytest.raises(PeerFault):
        reader.feed(encode_frame(FrameType.DATA, raw[5:] + b"x"))


def test_a_body_over_the_limit_is_refused_at_its_head():
    head = RequestHead(request_id="r", path="/v1/embeddings", body={"model": "t"}, timeout=5, body_bytes=2_000_000)
    with pytest.raises(PeerFault, match="exceeds"):
        RequestReader(max_body_bytes=1_000_000).feed(encode_frame(FrameType.HEAD, encode_json(head)))


def test_a_raw_field_in_the_head_json_is_not_the_body():
    payload = json.dumps(
        {"request_id": "r", "path": "/tokenize", "body": {"model": "t"}, "timeout": 5, "body_bytes": 2, "raw": "zz"}
    ).encode()
    reader = RequestReader()
    assert reader.feed(encode_frame(FrameType.HEAD, payload)) is None  # still waiting for its 2 bytes
    head = reader.feed(encode_frame(FrameType.DATA, b"ok"))
    assert head is not None and head.raw == b"ok"


@pytest.mark.parametrize(
    "fields",
    [
        {"path": "/v1/chat/completions", "body_bytes": 3},  # chat travels parsed
        {"path": "/v1/embeddings"},  # every other path raw
        {"path": "/v1/images/generations", "body_bytes": 3},  # not a path the mesh forwards
    ],
)
def test_heads_that_mix_up_the_two_kinds_of_body_are_the_senders_fault(fields):
    payload = json.dumps({"request_id": "r", "body": {"model": "t"}, "timeout": 5, **fields}).encode()
    with pytest.raises(PeerFault):
        RequestReader().feed(encode_frame(FrameType.HEAD, payload))


def test_the_request_digest_covers_the_raw_body():
    body = {"model": "tiny"}
    assert request_digest("/tokenize", body, b"a") != request_digest("/tokenize", body, b"b")
    assert request_digest("/v1/chat/completions", body) == request_digest("/v1/chat/completions", body, None)


def test_multipart_fields_are_read_and_renamed_leaving_every_other_byte():
    audio = b"RIFF\r\n--" + bytes(range(256))
    raw = multipart({"model": "tiny", "stream": "true"}, audio)
    assert form_field(raw, CONTENT_TYPE, "model") == "tiny"
    assert form_field(raw, CONTENT_TYPE, "stream") == "true"
    assert form_field(raw, CONTENT_TYPE, "language") is None
    renamed = replace_field(raw, CONTENT_TYPE, "model", "/models/tiny-llama")
    assert renamed == raw.replace(b"\r\n\r\ntiny\r\n", b"\r\n\r\n/models/tiny-llama\r\n")
    with pytest.raises(MultipartError):
        form_field(raw, "application/json", "model")


def test_vllm_openapi_paths_map_to_ids():
    published = ["/v1/models", "/v1/chat/completions", "/tokenize", "/v1/embeddings", "/pooling", "/rerank"]
    assert served_path_ids(published) == ("chat", "embeddings", "tokenize")
    assert set(PATH_IDS) == set(ENDPOINT_PATHS)


def test_an_offer_without_paths_serves_chat_and_completions_only():
    old = ModelOffer(name="m")
    assert old.serves("/v1/chat/completions") and old.serves("/v1/completions")
    assert not old.serves("/v1/embeddings")
    new = ModelOffer(name="m", paths=("embeddings", "images-v9"))  # an id from a newer peer is kept
    assert new.serves("/v1/embeddings") and not new.serves("/v1/chat/completions")
    with pytest.raises(ValueError):
        ModelOffer(name="m", paths=("Chat Completions, please",))
    with pytest.raises(ValueError):
        ModelOffer(name="m", paths=tuple(f"p{i}" for i in range(33)))


def test_an_ad_of_many_models_with_every_path_still_fits():
    identity = new_identity()
    every = tuple(PATH_IDS.values())
    models = tuple(ModelOffer(name="m" * 200 + str(i), paths=every) for i in range(MAX_AD_MODELS))
    signed = make_ad(identity, seq=1, now=0, ttl=60, addrs=(), models=models, version="x")
    assert len(sign_ad(identity, signed)) < MAX_AD_BYTES


def ad(identity: Identity, paths: tuple[str, ...] | None) -> CapabilityAd:
    return make_ad(identity, seq=1, now=0, ttl=60, addrs=(), models=(ModelOffer(name="m", paths=paths),), version="x")


class Pool:
    def __init__(self, ads):
        self.ads = {a.peer_id: a for a in ads}

    def serving(self, model, region=None):
        from garage_p2p.core.provider_index import IndexedSet

        members = IndexedSet()
        for peer in self.ads:
            members.add(peer)
        return members

    def live_ad(self, peer_id, now):
        return self.ads.get(peer_id)


def test_routing_considers_only_providers_advertising_the_path():
    chat_only, embedder = new_identity(), new_identity()
    ads = [ad(chat_only, None), ad(embedder, ("chat", "completions", "embeddings"))]
    router = Router(random.Random(1))
    request = RouteRequest(model="m", path="/v1/embeddings")
    assert [a.peer_id for a in router.shortlist(Pool(ads), request, 0)] == [embedder.peer_id]
    assert len(router.shortlist(Pool(ads), RouteRequest(model="m"), 0)) == 2
    explained = {c.peer_id: c.reason for c in router.rank(ads, request, {}, 0)}
    assert explained[chat_only.peer_id] == "does not serve /v1/embeddings"


def test_a_path_no_provider_of_the_model_serves_is_a_404_naming_it():
    known = [ad(new_identity(), None)]
    info = no_candidate_error(known, RouteRequest(model="m", path="/v1/rerank"))
    assert info.status == 404 and "/v1/rerank" in info.error.message and info.error.code == "path_not_served"
    unknown = no_candidate_error([], RouteRequest(model="m", path="/v1/rerank"))  # as vLLM answers it
    assert (unknown.status, unknown.error.type, unknown.error.code) == (404, "NotFoundError", "404")
