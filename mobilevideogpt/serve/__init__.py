"""`mvgpt serve`: one process, one model worker, a web page and an OpenAI-compatible API.

    app.py       the FastAPI application with the Gradio page mounted at `/`, and the uvicorn runner
    api.py       `/v1/chat/completions` (streamed or not), `/v1/files`, `/v1/models`, `/health`: one function
                 per route group, over the steps of a request
    webapp.py    the Gradio page: ask about a video, compare two models, browse a dataset; one layout and
                 one wiring function per tab
    worker.py    the bounded request queue and the one thread that owns the models
    models.py    the loaded models: ids, input preparation, prompt token counts
    uploads.py   uploaded videos: size limit, content check, private storage
    paths.py     the directories the operator allows (`--allow-root`)
    datasets.py  split files and evaluation predictions under those directories
    media.py     browser-playable copies of videos
    prompts.py   the QVED prompts offered on the page

Application code: it may import gradio and FastAPI; the library does not import it.
"""
