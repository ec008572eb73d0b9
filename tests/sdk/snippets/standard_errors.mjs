// "Standard Errors" (JavaScript) from the Error Handling docs page, unchanged
// except for apiKey and baseURL. Run by tests/sdk/node/sdk.test.mjs.
import OpenAI from "openai";

const client = new OpenAI({
  apiKey: process.env.MUME_API_KEY ?? "sk-mume-sdk-test",
  baseURL: process.env.MUME_BASE_URL,
});

try {
  const response = await client.chat.completions.create({
    model: "openai/gpt-4.1-mini",
    messages: [{role: "user", content: "Hello!"}],
  });
  console.log(response.choices[0].message.content);
} catch (error) {
  if (error instanceof OpenAI.APIConnectionError) {
    console.error("Connection error:", error.message);
  } else if (error instanceof OpenAI.RateLimitError) {
    console.error("Rate limit exceeded:", error.message);
  } else if (error instanceof OpenAI.APIError) {
    console.error(`API error: ${error.status} - ${error.message}`);
  } else {
    throw error;
  }
}
