using System.Text.Json;
using System.Text.Json.Serialization;

namespace TaskiqPg;

/// <summary>Reads a label object whose values may be any JSON scalar (Python producers send ints and bools) as strings.</summary>
internal sealed class StringLabelsConverter : JsonConverter<Dictionary<string, string>>
{
    public override Dictionary<string, string> Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        var labels = new Dictionary<string, string>();
        if (reader.TokenType == JsonTokenType.Null)
        {
            return labels;
        }

        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw new JsonException("'labels' must be a JSON object.");
        }

        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            var name = reader.GetString()!;
            reader.Read();
            labels[name] = reader.TokenType switch
            {
                JsonTokenType.String => reader.GetString()!,
                JsonTokenType.Null => "",
                JsonTokenType.StartObject or JsonTokenType.StartArray => JsonElement.ParseValue(ref reader).GetRawText(),
                _ => JsonElement.ParseValue(ref reader).GetRawText(),
            };
        }

        return labels;
    }

    public override void Write(Utf8JsonWriter writer, Dictionary<string, string> value, JsonSerializerOptions options)
    {
        writer.WriteStartObject();
        foreach (var (name, text) in value)
        {
            writer.WriteString(name, text);
        }

        writer.WriteEndObject();
    }
}
