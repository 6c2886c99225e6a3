// grpcload: the gRPC side of bench.compare's L7 section, on grpc-go alone.
//
//	grpcload serve -addr :50051
//	grpcload load -addr HOST:PORT -conns 4 -workers 32 -seconds 5
//
// serve answers every unary call on any method with a 1 KiB message. load makes
// unary calls to /bench.Echo/Unary from -workers goroutines spread over -conns
// HTTP/2 connections (grpc.ClientConn) for -seconds, each call checked for
// status OK, and prints one JSON line: calls, ok, errors, calls/s and latency
// percentiles (ms). Messages are raw bytes (a codec that neither parses nor
// builds protobuf), so the tool needs no generated code; on the wire they are
// ordinary gRPC messages (length-prefixed, content-type application/grpc).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const method = "/bench.Echo/Unary"

type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var reply = make([]byte, 1024)

func unary(_ any, stream grpc.ServerStream) error {
	var in []byte
	if err := stream.RecvMsg(&in); err != nil {
		return err
	}
	out := reply
	return stream.SendMsg(&out)
}

func serve(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	server := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(unary))
	return server.Serve(lis)
}

type result struct {
	Calls  int     `json:"calls"`
	OK     int     `json:"ok"`
	Errors int     `json:"errors"`
	Rps    float64 `json:"rps"`
	P50    float64 `json:"p50_ms"`
	P90    float64 `json:"p90_ms"`
	P99    float64 `json:"p99_ms"`
	First  string  `json:"first_error,omitempty"`
}

func load(addr string, conns, workers int, seconds float64) (result, error) {
	clients := make([]*grpc.ClientConn, conns)
	for i := range clients {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			return result{}, err
		}
		defer c.Close()
		clients[i] = c
	}
	request := []byte("bench")
	// one call per connection first: connections are set up before the clock starts
	for _, c := range clients {
		var out []byte
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.Invoke(ctx, method, &request, &out)
		cancel()
		if err != nil {
			return result{}, fmt.Errorf("first call: %w", err)
		}
	}
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	var mu sync.Mutex
	var res result
	var latencies []float64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(c *grpc.ClientConn) {
			defer wg.Done()
			mine := make([]float64, 0, 65536)
			ok, errs, first := 0, 0, ""
			for time.Now().Before(deadline) {
				var out []byte
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := c.Invoke(ctx, method, &request, &out)
				cancel()
				if err != nil || len(out) != len(reply) {
					errs++
					if first == "" {
						first = fmt.Sprint(err, " reply bytes ", len(out))
					}
					continue
				}
				ok++
				mine = append(mine, float64(time.Since(start).Microseconds())/1000)
			}
			mu.Lock()
			res.OK += ok
			res.Errors += errs
			if res.First == "" {
				res.First = first
			}
			latencies = append(latencies, mine...)
			mu.Unlock()
		}(clients[w%conns])
	}
	wg.Wait()
	res.Calls = res.OK + res.Errors
	res.Rps = float64(res.OK) / seconds
	sort.Float64s(latencies)
	pick := func(pct float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		rank := int(pct/100*float64(len(latencies))+0.999999) - 1
		if rank < 0 {
			rank = 0
		}
		return latencies[rank]
	}
	res.P50, res.P90, res.P99 = pick(50), pick(90), pick(99)
	return res, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grpcload serve|load [flags]")
		os.Exit(2)
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := flags.String("addr", ":50051", "listen (serve) or dial (load) address")
	conns := flags.Int("conns", 4, "HTTP/2 connections (load)")
	workers := flags.Int("workers", 32, "concurrent callers (load)")
	seconds := flags.Float64("seconds", 5, "how long (load)")
	_ = flags.Parse(os.Args[2:])
	switch os.Args[1] {
	case "serve":
		if err := serve(*addr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "load":
		res, err := load(*addr, *conns, *workers, *seconds)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = json.NewEncoder(os.Stdout).Encode(res)
	default:
		fmt.Fprintln(os.Stderr, "usage: grpcload serve|load [flags]")
		os.Exit(2)
	}
}
