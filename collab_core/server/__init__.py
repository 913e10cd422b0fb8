"""``collab serve``: the engine behind an OpenAI-compatible HTTP API, and a page that shows the routing.

* ``openai_format`` -- the wire format as pure functions (requests checked, chunks and responses built);
* ``routing`` -- one router per request, so no answer depends on the others;
* ``app`` -- the Starlette app (``create_app``): the API, the page, bad input answered with a clear 4xx;
* ``serving`` -- uvicorn, in the foreground (``collab serve``) or on a background thread (tests, the demo);
* ``assets``, ``tokenview`` -- the page's files, and the same token view as one self-contained HTML file
  (``collab run --html``).

Starlette and uvicorn come with the ``serve`` extra; nothing here is imported by the rest of the library, and
``tokenview`` (used by ``collab run --html``) needs neither.
"""
