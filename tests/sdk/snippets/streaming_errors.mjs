// "Streaming Error Handling" (JavaScript) from the Error Handling docs page,
// preceded by the client construction of its "Standard Errors" snippet;
// unchanged except for apiKey and baseURL. Run by tests/sdk/node/sdk.test.mjs.
import OpenAI from "openai";

const client = new OpenAI({
  apiKey: process.env.MUME_API_KEY ?? "sk-mume-sdk-test",
  baseURL: process.env.MUME_BASE_URL,
});

try {
  const stream = await client.chat.completions.create({
    model: "openai/gpt-4.1-mini",
    messages: [{role: "user", content: "Hello!"}],
    stream: true,
  });
  for await (const chunk of stream) {
    if (chunk.error) {
      console.error("Stream error:", chunk.error.message);
      break;
    }
    const content = chunk.choices[0]?.delta?.content;
    if (content) {
      process.stdout.write(content);
    }
  }
} catch (error) {
  if (error instanceof OpenAI.APIError) {
    console.error(`API error: ${error.status} - ${error.message}`);
  } else {
    throw error;
  }
}
