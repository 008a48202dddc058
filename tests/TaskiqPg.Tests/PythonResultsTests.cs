using System.Text;
using System.Text.Json;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// The results table shared with Python's taskiq-postgres: UTF-8 JSON bytes in <c>bytea</c> (what taskiq's
/// JSONSerializer reads and writes), its positional inserts, a table Python created first, and the upgrade of
/// TaskiqPg's earlier text layout. Python's statements are copied from taskiq-postgres.
/// </summary>
public sealed class PythonResultsTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    // taskiq-postgres (asyncpg) CREATE_TABLE_QUERY / CREATE_INDEX_QUERY, INSERT_RESULT_QUERY, INSERT_PROGRESS_QUERY, SELECT_RESULT_QUERY.
    private const string PythonCreate = """
        CREATE TABLE IF NOT EXISTS {0} (
            task_id VARCHAR UNIQUE,
            result BYTEA,
            progress BYTEA
        );
        CREATE INDEX IF NOT EXISTS taskiq_results_task_id_idx ON {0} USING HASH (task_id);
        """;

    private const string PythonInsertResult = "INSERT INTO {0} VALUES ($1, $2, NULL) ON CONFLICT (task_id) DO UPDATE SET result = $2";
    private const string PythonInsertProgress = "INSERT INTO {0} VALUES ($1, NULL, $2) ON CONFLICT (task_id) DO UPDATE SET progress = $2";
    private const string PythonSelectResult = "SELECT result FROM {0} WHERE task_id = $1";

    // taskiq's JSONSerializer.dumpb(model_dump(TaskiqResult(...))): json.dumps(...).encode().
    private const string PythonResult = """{"is_err": false, "log": null, "return_value": {"total": 42, "who": "Jos\u00e9"}, "execution_time": 0.01, "labels": {}, "error": null}""";

    private static string Schema() => "pyres" + Guid.NewGuid().ToString("N")[..8];

    private async Task ExecuteAsync(NpgsqlDataSource dataSource, string sql, params object[] values)
    {
        await using var command = dataSource.CreateCommand(sql);
        foreach (var value in values)
        {
            command.Parameters.AddWithValue(value);
        }

        await command.ExecuteNonQueryAsync();
    }

    private static async Task<byte[]?> PythonReadAsync(NpgsqlDataSource dataSource, string table, string taskId)
    {
        await using var command = dataSource.CreateCommand(string.Format(PythonSelectResult, table));
        command.Parameters.AddWithValue(taskId);
        return await command.ExecuteScalarAsync() as byte[];
    }

    [Fact]
    public async Task Results_are_UTF8_JSON_bytes_in_Pythons_column_order_both_ways()
    {
        var schema = Schema();
        var table = $"\"{schema}\".taskiq_results";
        var dataSource = db.CreateDataSource();
        await using var backend = new PostgresResultBackend(dataSource, new PostgresResultBackendOptions { Schema = schema });
        await backend.StartAsync();

        // TaskiqPg writes; Python's SELECT gets bytes that json.loads reads (UTF-8, no BOM).
        await backend.SetResultAsync("from-dotnet", new TaskResult { ReturnValue = JsonDocument.Parse("\"Zoë\"").RootElement, ExecutionTime = 0.5 });
        var bytes = await PythonReadAsync(dataSource, table, "from-dotnet");
        Assert.NotNull(bytes);
        Assert.NotEqual(0xEF, bytes![0]);
        using (var json = JsonDocument.Parse(bytes))
        {
            Assert.Equal("Zoë", json.RootElement.GetProperty("return_value").GetString());
            Assert.False(json.RootElement.GetProperty("is_err").GetBoolean());
        }

        // Python writes with its positional inserts; TaskiqPg reads result and progress.
        await ExecuteAsync(dataSource, string.Format(PythonInsertProgress, table), "from-python", Encoding.UTF8.GetBytes("""{"step": 3, "of": 5}"""));
        Assert.Equal(3, (await backend.GetProgressAsync<JsonElement>("from-python")).GetProperty("step").GetInt32());
        Assert.False(await backend.IsResultReadyAsync("from-python"));
        await ExecuteAsync(dataSource, string.Format(PythonInsertResult, table), "from-python", Encoding.UTF8.GetBytes(PythonResult));
        var result = await backend.WaitForResultAsync("from-python", TimeSpan.FromSeconds(10));
        Assert.Equal("José", result.ReturnValue.GetProperty("who").GetString());

        // TaskiqPg's progress lands in Python's progress column (the third).
        await backend.SetProgressAsync("from-dotnet", new { step = 1 });
        await using var command = dataSource.CreateCommand($"SELECT progress FROM {table} WHERE task_id = 'from-dotnet'");
        Assert.Equal("""{"step":1}""", Encoding.UTF8.GetString((byte[])(await command.ExecuteScalarAsync())!));
    }

    [Fact]
    public async Task A_pickled_result_is_refused_with_what_to_change()
    {
        var schema = Schema();
        var dataSource = db.CreateDataSource();
        await using var backend = new PostgresResultBackend(dataSource, new PostgresResultBackendOptions { Schema = schema });
        await backend.StartAsync();
        // pickle.dumps(...) of protocol 4 starts with 0x80 0x04.
        await ExecuteAsync(dataSource, string.Format(PythonInsertResult, $"\"{schema}\".taskiq_results"), "pickled", new byte[] { 0x80, 0x04, 0x95, 0x10, 0x00 });

        var error = await Assert.ThrowsAsync<JsonException>(() => backend.GetResultAsync("pickled"));
        Assert.Contains("JSONSerializer", error.Message);
    }

    [Fact]
    public async Task A_results_table_Python_created_first_is_adopted_with_its_rows()
    {
        var schema = Schema();
        var table = $"\"{schema}\".taskiq_results";
        var dataSource = db.CreateDataSource();
        await ExecuteAsync(dataSource, $"CREATE SCHEMA {schema}");
        await ExecuteAsync(dataSource, string.Format(PythonCreate, table));
        await ExecuteAsync(dataSource, string.Format(PythonInsertResult, table), "old", Encoding.UTF8.GetBytes(PythonResult));

        await using var backend = new PostgresResultBackend(dataSource, new PostgresResultBackendOptions { Schema = schema });
        await backend.StartAsync();

        Assert.Equal(42, (await backend.GetResultAsync("old")).ReturnValue.GetProperty("total").GetInt32());
        await backend.SetResultAsync("new", new TaskResult { IsError = true, Error = new TaskError("KeyError", "x"), StackTrace = "at Here()" });
        using var json = JsonDocument.Parse((await PythonReadAsync(dataSource, table, "new"))!);
        Assert.Equal("KeyError", json.RootElement.GetProperty("error").GetProperty("exc_type").GetString());
        Assert.Equal("at Here()", (await backend.GetResultAsync("new")).StackTrace);
    }

    [Fact]
    public async Task TaskiqPgs_earlier_text_layout_is_upgraded_in_place_keeping_results_traces_and_progress()
    {
        var schema = Schema();
        var table = $"\"{schema}\".taskiq_results";
        var dataSource = db.CreateDataSource();
        // The layout and version record of TaskiqPg before this change.
        await ExecuteAsync(dataSource, $$$"""
            CREATE SCHEMA {{{schema}}};
            CREATE TABLE {{{table}}} (task_id text PRIMARY KEY, result text, stack_trace text, progress text,
                                  created_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz);
            CREATE TABLE "{{{schema}}}".taskiq_schema_versions (object_name text PRIMARY KEY, version integer NOT NULL,
                                  applied_at timestamptz NOT NULL DEFAULT now(), min_code_version integer NOT NULL DEFAULT 0);
            INSERT INTO "{{{schema}}}".taskiq_schema_versions (object_name, version) VALUES ('taskiq_results', 1);
            INSERT INTO {{{table}}} (task_id, result, stack_trace, progress) VALUES
                ('done', '{"is_err": true, "return_value": null, "execution_time": 1.0, "labels": {}, "error": {"type": "E", "message": "é"}}', 'at Old()', '{"p": 9}');
            """);

        await using var backend = new PostgresResultBackend(dataSource, new PostgresResultBackendOptions { Schema = schema });
        await backend.StartAsync();

        var result = await backend.GetResultAsync("done");
        Assert.Equal(new TaskError("E", "é"), result.Error);
        Assert.Equal("at Old()", result.StackTrace);
        Assert.Equal(9, (await backend.GetProgressAsync<JsonElement>("done")).GetProperty("p").GetInt32());
        await using var columns = dataSource.CreateCommand(
            $"SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = 'taskiq_results'");
        Assert.Equal("task_id:text,result:bytea,progress:bytea,stack_trace:text,created_at:timestamp with time zone,expires_at:timestamp with time zone",
            (string)(await columns.ExecuteScalarAsync())!);
    }
}
