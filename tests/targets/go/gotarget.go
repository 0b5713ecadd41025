// Go target of tests/golang.rs: Go's register ABI (arguments in RAX, RBX, RCX, RDI, ...,
// the goroutine in R14), goroutine stacks that grow and move, and a garbage collector that
// scans them. Commands on stdin, one per line:
//
//	run   one round: f1 called 1000 times, f3 7 times, f2 never; prints "sum=<hex>"
//	par   16 goroutines allocating, growing stacks, and a GC; prints "par=<hex>"
//	quit  prints "bye" and exits 0
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"sync"
)

//go:noinline
func f1(x uint64) uint64 { return x*6364136223846793005 + 1442695040888963407 }

//go:noinline
func f2(x uint64) uint64 { return x ^ (x >> 17) }

//go:noinline
func f3(x, y uint64) uint64 { return (x << 7) + y*3 + (x >> 57) }

func round() uint64 {
	s := uint64(1)
	for i := 0; i < 1000; i++ {
		s = f1(s)
	}
	for i := uint64(0); i < 7; i++ {
		s = f3(s, i)
	}
	return s
}

// deep recurses with a big frame so goroutine stacks grow (and are copied) while hooked.
//
//go:noinline
func deep(n int, s uint64) uint64 {
	var pad [256]uint64
	pad[n%256] = s
	if n == 0 {
		return s + pad[0]
	}
	return deep(n-1, f1(s)+pad[n%256])
}

func par() uint64 {
	var wg sync.WaitGroup
	res := make([]uint64, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			m := map[int][]byte{}
			s := uint64(g)
			for i := 0; i < 2000; i++ {
				s = f1(s)
				m[i%512] = make([]byte, i%300)
			}
			res[g] = deep(200, s)
		}(g)
	}
	wg.Wait()
	runtime.GC()
	sum := uint64(0)
	for _, r := range res {
		sum += r
	}
	return sum
}

func main() {
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "run":
			fmt.Printf("sum=%016x\n", round())
		case "par":
			fmt.Printf("par=%016x\n", par())
		case "quit":
			fmt.Println("bye")
			return
		}
	}
}
