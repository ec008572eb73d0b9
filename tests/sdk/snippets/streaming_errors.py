# "Streaming Error Handling" (Python) from the Error Handling docs page,
# preceded by the client construction of its "Standard Errors" snippet;
# unchanged except for api_key and base_url. Run by tests/sdk/python/test_sdk.py.
import os

import openai

client = openai.OpenAI(
    api_key=os.environ.get("MUME_API_KEY", "sk-mume-sdk-test"),
    base_url=os.environ["MUME_BASE_URL"],
)

try:
    stream = client.chat.completions.create(
        model="openai/gpt-4.1-mini",
        messages=[{"role": "user", "content": "Hello!"}],
        stream=True,
    )
    for chunk in stream:
        # Check for error events in the stream
        if hasattr(chunk, "error") and chunk.error:
            print(f"Stream error: {chunk.error.get('message')}")
            break
        content = chunk.choices[0].delta.content
        if content:
            print(content, end="", flush=True)
except openai.APIError as e:
    # Connection or pre-stream errors are still raised as exceptions
    print(f"API error: {e}")
