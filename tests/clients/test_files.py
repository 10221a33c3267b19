"""Images in, images out and search sources through the official `openai` Python SDK
against the running `--demo` binary (README "Images and search sources").

The simulated vision model "sees" an attached image: with `@@sim:files` it answers one line per
file, `NAME: MEDIA_TYPE, N bytes, sha256 HEX` (README "Simulator"). Pictures it draws are PNGs
in the upstream's pixels for the asked ratio (1328x1328 square, 1664x928 for 16:9).
"""

import base64
import hashlib
import http.server
import struct
import threading
import urllib.request
import zlib

import openai
import pytest
from openai import OpenAI

from conftest import running_demo

VISION_MODEL = "qwen3.7-plus"


def png(width, height):
    """A valid greyscale PNG, built here (not by the code under test)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([(x * 7) % 256 for x in range(width)]) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


IMAGE = png(3, 2)
DIGEST = hashlib.sha256(IMAGE).hexdigest()


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


class ImageServer:
    """Serves IMAGE at /img.png on 127.0.0.1 and counts the requests it gets."""

    def __init__(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(IMAGE)))
                self.end_headers()
                self.wfile.write(IMAGE)

            def log_message(self, *args):
                pass

        self.hits = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/img.png"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def image_server():
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def fetching_demo():
    """A demo allowed to fetch plain http from 127.0.0.1 (where the test's image server is)."""
    with running_demo(env={"IMAGE_FETCH_ALLOW": "127.0.0.1/32", "IMAGE_FETCH_ALLOW_HTTP": "true"}) as d:
        yield d


def client_for(base_url):
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


def ask_about(client, url, model=VISION_MODEL, **extra):
    return client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image? @@sim:files"},
                    {"type": "image_url", "image_url": {"url": url, "detail": "auto"}},
                ],
            }
        ],
        **extra,
    )


def expected_line():
    return f"image-{DIGEST[:12]}.png: image/png, {len(IMAGE)} bytes, sha256 {DIGEST}"


def test_vision_with_a_base64_image(base_url):
    client = client_for(base_url)
    uri = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    answer = ask_about(client, uri)
    assert expected_line() in answer.choices[0].message.content
    # Streamed, the same.
    stream = ask_about(client, uri, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert expected_line() in text


def test_vision_with_an_image_address(fetching_demo, image_server):
    client = client_for(fetching_demo["base_url"])
    answer = ask_about(client, image_server.url)
    assert expected_line() in answer.choices[0].message.content
    assert image_server.hits == 1


def test_a_model_without_vision_is_refused(base_url):
    client = client_for(base_url)
    uri = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    with pytest.raises(openai.BadRequestError) as e:
        ask_about(client, uri, model="qwen3.8-max")
    assert e.value.code == "model_not_vision_capable"


@pytest.mark.parametrize(
    "url",
    [
        "LOOPBACK",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.png",
        "http://[::1]/a.png",
        "file:///etc/passwd",
    ],
)
def test_forbidden_image_addresses_are_refused_unasked(base_url, image_server, url):
    # The session demo allows no network: a loopback address is refused like the others.
    url = image_server.url if url == "LOOPBACK" else url
    client = client_for(base_url)
    with pytest.raises(openai.BadRequestError) as e:
        ask_about(client, url)
    assert e.value.code == "invalid_image_url"
    assert e.value.body["param"] == "messages[0].content[1].image_url"
    assert image_server.hits == 0


def test_image_generation_by_address(base_url):
    client = client_for(base_url)
    result = client.images.generate(prompt="a lighthouse at dusk", n=2, size="1792x1024")
    assert len(result.data) == 2
    for image in result.data:
        with urllib.request.urlopen(image.url, timeout=30) as r:
            assert png_size(r.read()) == (1664, 928)


def test_image_generation_as_base64(base_url):
    client = client_for(base_url)
    result = client.images.generate(prompt="a cat", response_format="b64_json", model="dall-e-3")
    assert len(result.data) == 1
    assert result.data[0].url is None
    assert png_size(base64.b64decode(result.data[0].b64_json)) == (1328, 1328)


def test_image_generation_refuses_a_size_it_cannot_draw(base_url):
    client = client_for(base_url)
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", size="1000x300")
    assert e.value.body["param"] == "size"


SEARCH_ANSWER = 'Simulated answer — 模拟回答[[1]]: you said "weather in Oslo".[[2]]'


def citations(annotations):
    return [
        (a.type, a.url_citation.url.startswith("https://example."), a.url_citation.start_index, a.url_citation.end_index)
        for a in annotations
    ]


def expected_citations():
    one = SEARCH_ANSWER.index("[[1]]")
    two = SEARCH_ANSWER.index("[[2]]")
    end = len(SEARCH_ANSWER)
    return [
        ("url_citation", True, one, one + 5),
        ("url_citation", True, two, two + 5),
        ("url_citation", True, end, end),
    ]


def test_search_sources_as_annotations(base_url):
    client = client_for(base_url)
    answer = client.chat.completions.create(
        model="qwen3.7-plus-search", messages=[{"role": "user", "content": "weather in Oslo"}]
    )
    message = answer.choices[0].message
    assert message.content == SEARCH_ANSWER
    assert citations(message.annotations) == expected_citations()
    assert "weather" in message.annotations[0].url_citation.title


def test_search_sources_streamed_through_the_stream_helper(base_url):
    client = client_for(base_url)
    helper = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
    with helper(model="qwen3.7-plus-search", messages=[{"role": "user", "content": "weather in Oslo"}]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == SEARCH_ANSWER
    assert citations(message.annotations) == expected_citations()
