// Corpus target (go build -ldflags=-s): deterministic work through the standard library
// (sort, maps, fmt, hashing) and goroutines. Each line on stdin is a number of rounds to
// run (a multiple of 4); at end of input it prints the checksum of all of them.
package main

import (
	"bufio"
	"fmt"
	"hash/fnv"
	"os"
	"sort"
	"strconv"
	"sync"
)

func roundWork(r uint64) uint64 {
	v := make([]uint64, 512)
	for i := range v {
		v[i] = (uint64(i) * 2654435761) ^ r
	}
	sort.Slice(v, func(a, b int) bool { return v[a] < v[b] })
	m := map[string]uint64{}
	for i := 0; i < 512; i += 16 {
		m[fmt.Sprintf("%d:%x", i, v[i])] = v[i]
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := fnv.New64a()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte(strconv.FormatUint(m[k], 16)))
	}
	return h.Sum64()
}

func main() {
	var h uint64
	start := 0
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, _ := strconv.Atoi(in.Text())
		h = rounds(h, start, n)
		start += n
	}
	fmt.Printf("checksum %x\n", h)
}

func rounds(h uint64, start, n int) uint64 {
	for r := start; r < start+n; r += 4 {
		var wg sync.WaitGroup
		out := make([]uint64, 4)
		for j := 0; j < 4; j++ {
			wg.Add(1)
			go func(j int) {
				defer wg.Done()
				out[j] = roundWork(uint64(r + j))
			}(j)
		}
		wg.Wait()
		for _, x := range out {
			h = (h ^ x) * 1099511628211
		}
	}
	return h
}
