"""``fconv-ext-serve``: an fconv_ext model behind HTTP, with LibreTranslate's API.

Read in this order:

- :mod:`.cli`        the command line; loads nothing until it runs uvicorn
- :mod:`.app`        the Starlette app: routes, errors as ``{"error": ...}``, timeouts, disconnects
- :mod:`.limits`     what a request may be (body size, characters, sentences, alternatives, API keys)
- :mod:`.batcher`    dynamic batching of concurrent requests' sentences on one decoding thread
- :mod:`.translator` the model: fairseq's hub interface (encode, generate, decode), per-layer attention;
  or an fconv-ext-export directory through fconv_runtime
- :mod:`.markup`     ``format: html``: text nodes translated, markup kept
- :mod:`.metrics`    Prometheus metrics
- :mod:`.page`       the page at ``/`` (``static/index.html``)

The server needs ``pip install 'fconv-ext[serve]'`` (starlette, uvicorn, prometheus_client);
docs/serving.md has the whole story, benchmarks/results/serve.md the load test.
"""
