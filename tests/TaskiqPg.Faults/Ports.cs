using System.Net;
using System.Net.Sockets;

namespace TaskiqPg.Faults;

/// <summary>Local TCP ports for the servers the suite and the tests start.</summary>
public static class Ports
{
    /// <summary>A port nothing listens on right now (the OS picks it; it may be taken again before use).</summary>
    public static int Free()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        var port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return port;
    }
}
