; gimp3.scm: the Script-Fu of GIMP 3.0 for what tests/gimp/lib.scm and the
; test cases need and GIMP 2.10 spells differently (gimp2.scm). Loaded before
; lib.scm. GIMP 3.0 drops the counts before arrays, renames the getters
; (gimp-drawable-get-width ...), creates layers with the name first, has no
; plug-in-plasma, and exports whole images (file-raw-export) where 2.10 saved
; a drawable.

(define gimp-generation 3)

(define (layers img) (vector->list (car (gimp-image-get-layers img))))
(define (children item) (vector->list (car (gimp-item-get-children item))))
(define (layer-new img name w h type)
  (car (gimp-layer-new img name w h type 100 LAYER-MODE-NORMAL)))
(define (group-new img) (car (gimp-group-layer-new img "group")))
(define (drawable-width d) (car (gimp-drawable-get-width d)))
(define (drawable-height d) (car (gimp-drawable-get-height d)))
(define (drawable-offsets d) (gimp-drawable-get-offsets d))
(define (image-base-type img) (car (gimp-image-get-base-type img)))
(define (channel? d) (= (car (gimp-item-id-is-channel d)) TRUE))
(define (load-image path) (car (gimp-file-load RUN-NONINTERACTIVE path)))

; A deterministic, non-constant, opaque picture on the drawable: GIMP 3.0 has
; no plug-in-plasma, so a conical gradient between two colours.
(define (fill-pattern img drawable)
  (gimp-context-push)
  (gimp-context-set-foreground '(200 40 30))
  (gimp-context-set-background '(20 60 220))
  (gimp-context-set-gradient-fg-bg-rgb)
  (gimp-drawable-edit-gradient-fill drawable GRADIENT-CONICAL-ASYMMETRIC 0 FALSE 1 0 FALSE
                                    (* 0.3 (drawable-width drawable))
                                    (* 0.4 (drawable-height drawable))
                                    (drawable-width drawable) (drawable-height drawable))
  (gimp-context-pop))

(define (copy-colormap from to)
  (gimp-image-set-palette to (car (gimp-image-get-palette from))))

; file-raw-export writes an image's merged layers in the image's own format
; (and an indexed image's palette beside it, as PATH.pal).
(define (raw-save img drawable path)
  (file-raw-export #:run-mode RUN-NONINTERACTIVE #:image img #:file path))
(define raw-channel-directly #f)

; A text layer (on top of the image) of TEXT in the context's font and colour.
(define (text-layer img text size)
  (car (gimp-text-font img -1 0 0 text 0 TRUE size (car (gimp-context-get-font)))))
(define (text-layer? d) (= (car (gimp-item-id-is-text-layer d)) TRUE))
