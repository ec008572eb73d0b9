# "Standard Errors" (Python) from the Error Handling docs page, unchanged
# except for api_key and base_url. Run by tests/sdk/python/test_sdk.py.
import os

import openai

client = openai.OpenAI(
    api_key=os.environ.get("MUME_API_KEY", "sk-mume-sdk-test"),
    base_url=os.environ["MUME_BASE_URL"],
)

try:
    response = client.chat.completions.create(
        model="openai/gpt-4.1-mini",
        messages=[{"role": "user", "content": "Hello!"}],
    )
    print(response.choices[0].message.content)
except openai.APIConnectionError as e:
    print(f"Connection error: {e}")
except openai.RateLimitError as e:
    print(f"Rate limit exceeded: {e}")
except openai.APIStatusError as e:
    print(f"API error: {e.status_code} - {e.message}")
