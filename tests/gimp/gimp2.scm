; gimp2.scm: the Script-Fu of GIMP 2.10 for what tests/gimp/lib.scm and the
; test cases need and GIMP 3.0 spells differently (gimp3.scm has the 3.0
; forms). Loaded before lib.scm. PDB calls return lists in both ("car").

(define gimp-generation 2)

(define (layers img) (vector->list (cadr (gimp-image-get-layers img))))
(define (children item) (vector->list (cadr (gimp-item-get-children item))))
(define (layer-new img name w h type)
  (car (gimp-layer-new img w h type name 100 LAYER-MODE-NORMAL)))
(define (group-new img) (car (gimp-layer-group-new img)))
(define (drawable-width d) (car (gimp-drawable-width d)))
(define (drawable-height d) (car (gimp-drawable-height d)))
(define (drawable-offsets d) (gimp-drawable-offsets d))
(define (image-base-type img) (car (gimp-image-base-type img)))
(define (channel? d) (= (car (gimp-item-is-channel d)) TRUE))
(define (load-image path) (car (gimp-file-load RUN-NONINTERACTIVE path path)))

; A deterministic, non-constant, opaque picture on the drawable.
(define (fill-pattern img drawable) (plug-in-plasma RUN-NONINTERACTIVE img drawable 7 1.0))

(define (copy-colormap from to)
  (let ((cmap (gimp-image-get-colormap from)))
    (gimp-image-set-colormap to (car cmap) (cadr cmap))))

; The raw exporter writes a drawable's own bytes; a layer is first moved into
; a one-layer image (lib.scm), since the exporter merges visible layers.
(define (raw-save img drawable path)
  (file-raw-save2 RUN-NONINTERACTIVE img drawable path path 0 0))
(define raw-channel-directly #t)

; A text layer (on top of the image) of TEXT in the context's font and colour.
(define (text-layer img text size)
  (car (gimp-text-fontname img -1 0 0 text 0 TRUE size PIXELS (car (gimp-context-get-font)))))
(define (text-layer? d) (= (car (gimp-item-is-text-layer d)) TRUE))
